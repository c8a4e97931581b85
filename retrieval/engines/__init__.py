"""Search engines that index kinds run on: the adapter around pyserini / Anserini (Lucene).

- :mod:`retrieval.engines.jvm`: which Java runs, JVM options, the in-process JVM pyjnius embeds and
  the threads that call into it;
- :mod:`retrieval.engines.anserini`: Lucene index builds (BM25, integer impacts) in a separate JVM
  process;
- :mod:`retrieval.engines.lucene`: BM25 and impact search in-process;
- :mod:`retrieval.engines.impacts`: learned sparse weights as the integer impacts Lucene stores.

Nothing else in Sparsekit imports pyserini or jnius directly.
"""
