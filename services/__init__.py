"""Services: the gRPC servers, request validation and the ``sparsekit`` CLI.

The two faces of the platform over the same on-disk artifacts. Nothing else imports this package.
"""
