"""Stream: the Kafka way to run the pipeline (``bal-broker run``).

The consume / execute / produce / commit loop and the units it is built from: librdkafka
configuration, the annotated-output and dead-letter producers, offsets, metrics, JSON logs and the
``--workers`` supervisor. Uses :mod:`broker_plugin.pipeline`; nothing below imports this package.
"""
