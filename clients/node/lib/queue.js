"use strict";
// A queue-mode consumer (competing consumers, as SQS or RabbitMQ), written
// from broker.proto and docs/groups.md alone.
//
// The broker hands each record to one of the group's streams with a
// `Delivery` (ack id, delivery attempt, ack deadline). The application
// settles it with ack(), nack() or extend(); each call is one request,
// answered with an `AckResult` whose failures name refused ids by index
// (the others were settled). Ack ids are valid on any stream of the group,
// so an ack whose stream ended before its answer is sent again on the next
// stream (acking twice is harmless); a nack or extension then fails with the
// stream's error, since whether it was applied is unknown (and the broker
// gives a closed stream's records out again at once anyway).
//
// Bounds: at most IDS_PER_REQUEST_MAX ids per call (the broker's limit;
// more is refused here before anything is sent), REQUESTS_INFLIGHT_MAX
// requests waiting for their answer (the broker stops reading a stream at
// 16); further calls wait in line, merged into requests of up to 10,000
// ids, at most WAITING_MAX requests: with ack ids of 25 bytes, at most
// (16 + 64) * 10,000 * 25 bytes = 20 MB of ids held.

const { WeirCallError, streamError } = require("./errors");
const { ResumingStream } = require("./stream");

const IDS_PER_REQUEST_MAX = 10_000;
const REQUESTS_INFLIGHT_MAX = 16;
const WAITING_MAX = 64;

class QueueConsumer {
  constructor({
    clientFor,
    rotation,
    topic,
    group,
    partitions = [],
    start = "START_KIND_EARLIEST",
    ackDeadlineMs = 0,
    orderedKeys = false,
    messageWindow,
    byteWindow,
    grantDelayMs = 0,
    onDelivery,
  }) {
    this.subscription = {
      topic,
      group,
      partitions,
      mode: "CONSUME_MODE_QUEUE",
      start: { kind: start },
      ack_deadline_ms: ackDeadlineMs,
      ordered_keys: orderedKeys,
    };
    this.onDelivery = onDelivery;
    // A request: { key, kind, request, written, parts: [{ first, count, resolve, reject }] },
    // a part being one call's ids at request.ack_ids[first, first + count).
    this.inflight = new Map(); // request id -> request
    this.waiting = []; // requests beyond REQUESTS_INFLIGHT_MAX, in call order
    this.nextRequestId = 1;
    this.stats = { deliveries: 0, requests: 0, resent_acks: 0 };
    this.stream = new ResumingStream({ clientFor, rotation, messageWindow, byteWindow, grantDelayMs, handler: this });
  }

  run() {
    return this.stream.run().catch((error) => {
      this.failAll(error);
      throw error;
    });
  }

  close() {
    return this.stream.close();
  }

  // Each resolves to the refused ids, [{ index, code, reason, message, metadata, retriable }],
  // empty when every id was settled.
  ack(ackIds) {
    return this.request("ack", ackIds, {});
  }

  nack(ackIds, { delayMs, error = "" } = {}) {
    const fields = { error };
    if (delayMs !== undefined) {
      fields.delay_ms = delayMs;
    }
    return this.request("nack", ackIds, fields);
  }

  extend(ackIds, extensionMs) {
    return this.request("extend_deadline", ackIds, { extension_ms: extensionMs });
  }

  request(kind, ackIds, fields) {
    if (!Array.isArray(ackIds) || ackIds.length === 0 || ackIds.length > IDS_PER_REQUEST_MAX) {
      return Promise.reject(new RangeError(`a ${kind} takes 1 to ${IDS_PER_REQUEST_MAX} ack ids`));
    }
    if (!ackIds.every((id) => Buffer.isBuffer(id))) {
      return Promise.reject(new TypeError(`a ${kind} takes ack ids as Buffers (Delivery.ack_id)`));
    }
    return new Promise((resolve, reject) => {
      // A call that waits for room joins the last waiting request if it is
      // of the same kind and settings and has room for its ids: one request
      // then settles many calls, as the Python SDK batches them.
      const key = `${kind} ${JSON.stringify(fields)}`;
      const last = this.waiting[this.waiting.length - 1];
      let entry;
      if (last !== undefined && last.key === key && last.request.ack_ids.length + ackIds.length <= IDS_PER_REQUEST_MAX) {
        entry = last;
      } else if (this.waiting.length >= WAITING_MAX) {
        reject(new Error(`${WAITING_MAX} settle requests already wait for room`));
        return;
      } else {
        entry = { key, kind, request: { ack_ids: [], ...fields }, parts: [], written: false };
        this.waiting.push(entry);
      }
      entry.parts.push({ first: entry.request.ack_ids.length, count: ackIds.length, resolve, reject });
      entry.request.ack_ids.push(...ackIds);
      this.pump();
    });
  }

  // Moves waiting requests in flight while there is room, and writes every
  // unwritten one in flight when a stream is open.
  pump() {
    while (this.inflight.size < REQUESTS_INFLIGHT_MAX && this.waiting.length > 0) {
      const entry = this.waiting.shift();
      const requestId = this.nextRequestId++;
      entry.request.request_id = String(requestId);
      this.inflight.set(requestId, entry);
    }
    for (const entry of this.inflight.values()) {
      if (!entry.written && this.stream.write({ [entry.kind]: entry.request })) {
        entry.written = true;
        this.stats.requests += 1;
      }
    }
  }

  subscribe() {
    return this.subscription;
  }

  onSubscribed() {
    this.pump();
  }

  onBatch(batch) {
    const { records, deliveries, partition } = batch;
    if (deliveries.length !== records.length) {
      throw new Error(`a queue batch of ${records.length} records with ${deliveries.length} deliveries`);
    }
    records.forEach((record, i) => {
      this.stats.deliveries += 1;
      const d = deliveries[i];
      this.onDelivery(record, {
        partition,
        offset: Number(d.offset),
        ackId: d.ack_id,
        attempt: d.delivery_attempt,
        ackDeadlineMs: Number(d.ack_deadline_ms),
      });
    });
  }

  onResponse(response) {
    if (response.kind !== "ack") {
      throw new Error(`unexpected consume response ${response.kind}`);
    }
    const requestId = Number(response.ack.request_id);
    const entry = this.inflight.get(requestId);
    if (entry === undefined) {
      throw new Error(`an AckResult for request ${requestId}, which is not pending`);
    }
    this.inflight.delete(requestId);
    const failures = response.ack.failures.map((f) => ({ index: f.index, ...streamError(f.error) }));
    for (const { first, count, resolve } of entry.parts) {
      resolve(
        failures
          .filter((f) => f.index >= first && f.index < first + count)
          .map((f) => ({ ...f, index: f.index - first })),
      );
    }
    this.pump();
  }

  onStreamEnd(error) {
    for (const [requestId, entry] of this.inflight) {
      if (error !== null && entry.kind === "ack") {
        if (entry.written) {
          this.stats.resent_acks += 1;
        }
        entry.written = false; // sent again on the next stream
      } else if (entry.written || error === null) {
        this.inflight.delete(requestId);
        rejectParts(entry, new WeirCallError(entry.kind, error ?? closedError()));
      }
    }
    if (error === null) {
      for (const entry of this.waiting) rejectParts(entry, new WeirCallError(entry.kind, closedError()));
      this.waiting = [];
    }
  }

  failAll(error) {
    const entries = [...this.inflight.values(), ...this.waiting];
    this.inflight.clear();
    this.waiting = [];
    for (const entry of entries) rejectParts(entry, error);
  }
}

function rejectParts(entry, error) {
  for (const part of entry.parts) part.reject(error);
}

function closedError() {
  return { code: 1, reason: "", domain: "", message: "the consumer was closed", metadata: {}, retriable: false };
}

module.exports = { QueueConsumer, IDS_PER_REQUEST_MAX, REQUESTS_INFLIGHT_MAX };
