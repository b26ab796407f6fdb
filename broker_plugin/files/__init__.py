"""Files: the archive way to run the pipeline (``bal-broker replay``).

Input sources (files, directories, streamed tarballs), output writers (JSONL, Avro, Parquet, the
rejects file) and the replay command. Uses :mod:`broker_plugin.pipeline`.
"""
