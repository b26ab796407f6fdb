"""At-least-once delivery: produce every output, retry, dead-letter, and store acknowledged offsets.

Why it is shaped like this: an offset is *stored* only when every output of its message (and of
every earlier message of its partition) has been acknowledged (:class:`~broker_plugin.stream.offsets.OffsetTracker`);
librdkafka auto-commits stored offsets. A failed output's input goes to the DLQ with reason
``produce_failed``; if the DLQ refuses it too, the service stops with status 1 and that offset is
never stored. There is no application-level retry: librdkafka retries every message itself until
``delivery.timeout.ms`` (idempotently, in order), so an error in a delivery report means its retries
are spent or no retry can help; a second round from here only doubled the wait (and was untested).

Sizes: no single message may stop a partition. An input over ``kafka.input_max_bytes`` is never
decoded (:meth:`AtLeastOnceDelivery._oversized_input`: a dead-letter stub, ``message_too_large``); a
dead letter over ``kafka.dlq_max_bytes`` goes out as a stub (:func:`~broker_plugin.stream.outputs.dlq_stub`);
an output the producer or the broker refuses for its size is sent again without cutouts (flagged
``cutouts_dropped_size``), and when that fails too its input is dead-lettered (``output_too_large``);
a refused dead letter is sent again as a stub. Only a refused *stub* still stops the service.
:class:`AtLeastOnceDelivery` is mixed into the service.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from broker_plugin.stream.kafka_errors import SIZE_ERRORS, error_name, error_text
from broker_plugin.stream.offsets import OffsetTracker, _Entry
from broker_plugin.stream.outputs import Output, Work, dlq_headers, dlq_stub, fit_dead_letter
from broker_plugin.stream.stop import ServiceStop

#: The service's logger: these lines are the service's, whichever module holds the code.
log = logging.getLogger("broker_plugin.stream.service")

#: Application-level attempts after a failed delivery report: none (librdkafka's own retries are
#: spent by then); kept as a name because the service module exports it.
PRODUCE_RETRIES = 0


class AtLeastOnceDelivery:
    """Sending outputs one by one with delivery reports, and storing the offsets they complete.

    Expects of the service: ``cfg``, ``producer``, ``consumer``, ``encoder``, ``tracker``, ``stats``, ``metrics``,
    ``exactly_once``, ``_fatal``, the ``_acked_*`` counters and ``_log_rate_limited``.
    """

    tracker: OffsetTracker
    _fatal: ServiceStop | None

    def _dlq(self, msg: Any, error_class: str, reason: str, message: str, stage: str) -> Output:
        """The dead letter of input ``msg`` (a stub when over ``kafka.dlq_max_bytes``)."""
        headers = dlq_headers(msg, error_class=error_class, reason=reason, message=message, stage=stage)
        out = Output(self.cfg.kafka.dlq_topic, msg.key(), msg.value() or b"", list(headers), "dlq")
        return fit_dead_letter(out, self.cfg.kafka.dlq_max_bytes)

    def _oversized_input(self, msg: Any) -> Work | None:
        """For an input over ``kafka.input_max_bytes``, its Work: a dead-letter stub with reason
        ``message_too_large`` (the message is never decoded); None for any other input."""
        limit = self.cfg.kafka.input_max_bytes
        value = msg.value() or b""
        if len(value) <= limit:
            return None
        headers = dlq_headers(msg, error_class="MessageTooLarge", reason="message_too_large",
                              message=f"the input is {len(value)} bytes, over kafka.input_max_bytes ({limit})",
                              stage="consume")
        return Work(msg, [dlq_stub(Output(self.cfg.kafka.dlq_topic, msg.key(), value, headers, "dlq"))])

    def _produce_each(self, works: Sequence[Work]) -> None:
        """Register every input with the tracker and hand its outputs to the producer."""
        for w in works:
            m = w.msg
            entry = self.tracker.begin(m.topic(), m.partition(), m.offset(), len(w.outputs), m)
            for out in w.outputs:
                self._send(out, entry)
        self.producer.poll(0)

    def _send(self, out: Output, entry: _Entry) -> None:
        from confluent_kafka import KafkaException

        def on_delivery(err: Any, _msg: Any) -> None:
            self._delivered(err, out, entry)

        while True:
            try:
                self.producer.produce(out.topic, value=out.value, key=out.key, headers=out.headers,
                                      on_delivery=on_delivery)
                return
            except BufferError:  # local queue full: serve delivery reports, then retry
                self.producer.poll(0.1)
            except KafkaException as exc:  # refused before sending (e.g. larger than message.max.bytes)
                self._delivered(exc.args[0] if exc.args else exc, out, entry)
                return

    def _delivered(self, err: Any, out: Output, entry: _Entry) -> None:
        """Delivery report (or produce-time refusal) of one output."""
        if err is None:
            self._count_acked(out.kind)
            self.tracker.done(entry)
            return
        name = error_name(err)
        text = error_text(err)
        if name in SIZE_ERRORS and not out.reduced:
            self._send_smaller(out, entry, text)
            return
        if out.kind == "dlq":  # nowhere left to put the message: stop; its offset is never stored
            if self._fatal is None:
                self._fatal = ServiceStop(f"the dead-letter topic {out.topic} refused a message from "
                                          f"{dict(out.headers).get('bal_source')}: {text}; stopping without "
                                          "committing it")
            return
        self._dead_letter_input(out, entry, name, text, "output_too_large" if name in SIZE_ERRORS else "produce_failed")

    def _send_smaller(self, out: Output, entry: _Entry, text: str) -> None:
        """``out`` was refused for its size: send a dead letter as a stub, an output without its
        cutouts (else dead-letter its input, ``output_too_large``)."""
        self._log_rate_limited(f"produce-size-{out.kind}", "%s refused a message of %d bytes (%s); sending it %s",
                               out.topic, len(out.value), text,
                               "as a stub" if out.kind == "dlq" else "without cutouts")
        if out.kind == "dlq":
            self._send(dlq_stub(out), entry)
            return
        try:
            value = self.encoder.shrink(entry.source.value() or b"", out.value)
        except Exception as exc:  # still too large, or not readable back: the input goes to the DLQ
            self._dead_letter_input(out, entry, "MSG_SIZE_TOO_LARGE", f"{text}; without cutouts: {exc}",
                                    "output_too_large")
            return
        self._send(Output(out.topic, out.key, value, out.headers, out.kind, reduced=True), entry)

    def _count_acked(self, kind: str) -> None:
        """One acknowledged output of ``kind``; published by the service's ``_flush_counts``."""
        if kind == "out":
            self._acked_out += 1
        elif kind == "candidate":
            self._acked_candidates += 1
        else:
            self._acked_dlq += 1

    def _dead_letter_input(self, out: Output, entry: _Entry, name: str, text: str,
                           reason: str = "produce_failed") -> None:
        """An output failed for good: send its input to the DLQ instead (once per input)."""
        if out.kind == "out":  # the alert did not go out annotated after all (keeps the counts adding up)
            self.stats.annotated -= 1
        if entry.dlq_sent:  # another output of this input already went to the DLQ: that covers it
            self.tracker.done(entry)
            return
        entry.dlq_sent = True
        self._log_rate_limited(f"produce-dlq-{name}", "producing to %s failed for good (%s); dead-lettering the "
                               "input", out.topic, text)
        src = entry.source
        if src is None:  # cannot happen: the entry is not done while an output is outstanding
            self._fatal = ServiceStop(f"lost track of an input while dead-lettering ({text})")
            return
        self.stats.rejected += 1
        self.stats.reasons[reason] += 1
        self.metrics.reject(reason)
        self._send(self._dlq(src, "KafkaError", reason, f"{out.topic}: {text}", "produce"), entry)

    def _store(self) -> None:
        """Store the offsets whose acknowledged run grew (exactly_once: they go through the transaction)."""
        if self.exactly_once:
            return
        advanced = self.tracker.advanced()
        if not advanced:
            return
        from confluent_kafka import KafkaException, TopicPartition

        offsets = [TopicPartition(t, p, o) for t, p, o in advanced]
        try:
            self.consumer.store_offsets(offsets=offsets)
        except KafkaException as exc:  # partition no longer assigned: its next owner re-processes
            log.debug("store_offsets: %s", exc)

    def _flush_counts(self) -> None:
        m = self.metrics
        if self._acked_out:
            m.alerts_out.inc(self._acked_out)
            self.stats.produced_out += self._acked_out
        if self._acked_candidates:
            m.candidates.inc(self._acked_candidates)
            self.stats.produced_candidates += self._acked_candidates
        if self._acked_dlq:
            self.stats.produced_dlq += self._acked_dlq
        self._acked_out = self._acked_candidates = self._acked_dlq = 0
