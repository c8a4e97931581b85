"""Search engines that index kinds run on.

:mod:`retrieval.engines.lucene` is the one adapter around pyserini / Anserini (Lucene) and the JVM that
pyjnius embeds: Java runtime selection, JVM options, index building in a subprocess, BM25 and impact
search in-process. Nothing else in Sparsekit imports pyserini or jnius directly.
"""
