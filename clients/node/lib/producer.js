"use strict";
// An idempotent producer written against the generated API alone, as docs/sdk.md
// ("Idempotent producing") describes it for any language.
//
// Each partition has its own sequence counter and route (the node whose
// Produce stream carries its requests; any node accepts any partition and
// forwards it to the leader). At most INFLIGHT_PER_PARTITION_MAX requests of a
// partition are unanswered at once, because the broker recognises a retry
// only among a producer's last five batches there. When one of them fails
// with a retriable error (or the stream under it breaks), the later ones of
// that partition come back OUT_OF_ORDER_SEQUENCE; the partition then waits
// for all its answers, backs off, and resends every unanswered request in
// sequence order with the same sequences, so nothing is written twice or out
// of order. NOT_LEADER naming a leader we know moves the partition's route
// to that node; a node that stops or cannot be reached (UNAVAILABLE without
// NOT_LEADER) moves it to the next address of the list.

const { callError, streamError, WeirCallError } = require("./errors");

const INFLIGHT_PER_PARTITION_MAX = 5;
const ATTEMPTS_MAX = 20;
const BACKOFF_MS_MIN = 25;
const BACKOFF_MS_MAX = 1000;

class IdempotentProducer {
  // clients: Map address -> BrokerService client; route(partition) -> address.
  constructor({ clients, topic, producerId, producerEpoch, route }) {
    this.clients = clients;
    this.addresses = [...clients.keys()];
    this.topic = topic;
    this.producerId = producerId;
    this.producerEpoch = producerEpoch;
    this.route = route;
    this.partitions = new Map();
    this.streams = new Map();
    this.closedStreams = [];
    this.nextRequestId = 1;
    this.stats = { requests: 0, retried_requests: 0, retry_reasons: {}, route_changes: 0 };
  }

  // Queue one request of `records` (weir.v1.Record objects) for `partition`.
  // Resolves to { partition, firstSequence, count, baseOffset } once committed.
  send(partition, records) {
    const state = this.partitionState(partition);
    return new Promise((resolve, reject) => {
      state.queue.push({
        partition,
        firstSequence: state.nextSequence,
        records,
        attempts: 1,
        resolve,
        reject,
      });
      state.nextSequence += records.length;
      this.pump(state);
    });
  }

  // End every stream (all sends should be settled by now) and wait for their status.
  async close() {
    const streams = [...this.streams.values(), ...this.closedStreams];
    this.streams.clear();
    for (const stream of streams) {
      stream.call.end();
    }
    await Promise.all(streams.map((stream) => stream.done));
  }

  partitionState(partition) {
    let state = this.partitions.get(partition);
    if (state === undefined) {
      state = {
        partition,
        address: this.route(partition),
        nextSequence: 0,
        queue: [], // not yet sent, in sequence order
        inflight: [], // sent, unanswered, in sequence order
        redo: [], // answered with a retriable error: to send again
        rewinding: false,
        rewinds: 0,
      };
      this.partitions.set(partition, state);
    }
    return state;
  }

  pump(state) {
    while (
      !state.rewinding &&
      state.inflight.length < INFLIGHT_PER_PARTITION_MAX &&
      state.queue.length > 0
    ) {
      this.write(state, state.queue.shift());
    }
  }

  write(state, entry) {
    const stream = this.streamTo(state.address);
    const requestId = String(this.nextRequestId++);
    stream.pending.set(requestId, entry);
    state.inflight.push(entry);
    this.stats.requests += 1;
    stream.call.write({
      request_id: requestId,
      topic: this.topic,
      partition: entry.partition,
      batch: { records: entry.records },
      acks: "ACKS_ALL",
      producer_id: this.producerId,
      producer_epoch: this.producerEpoch,
      first_sequence: entry.firstSequence,
    });
  }

  streamTo(address) {
    let stream = this.streams.get(address);
    if (stream === undefined) {
      const call = this.clients.get(address).Produce();
      stream = { address, call, pending: new Map(), done: null };
      const self = stream;
      stream.done = new Promise((resolve) => call.on("status", resolve));
      call.on("data", (response) => this.onResponse(self, response));
      call.on("error", (err) => this.onBroken(self, callError(err)));
      call.on("end", () =>
        this.onBroken(self, { code: 14, reason: "", message: "stream ended", retriable: true }),
      );
      this.streams.set(address, stream);
    }
    return stream;
  }

  onResponse(stream, response) {
    const key = String(response.request_id);
    const entry = stream.pending.get(key);
    if (entry === undefined) {
      throw new Error(`answer to unknown request ${key} from ${stream.address}`);
    }
    stream.pending.delete(key);
    this.settle(entry, response.error ? streamError(response.error) : null, response);
  }

  // The call ended: every unanswered request on it has an unknown outcome.
  onBroken(stream, error) {
    if (this.streams.get(stream.address) === stream) {
      this.streams.delete(stream.address);
      this.closedStreams.push(stream);
    }
    const unanswered = [...stream.pending.values()];
    stream.pending.clear();
    for (const entry of unanswered) {
      this.settle(entry, { ...error, retriable: error.retriable || error.reason === "" }, null);
    }
  }

  settle(entry, error, response) {
    const state = this.partitions.get(entry.partition);
    state.inflight.splice(state.inflight.indexOf(entry), 1);
    if (error === null) {
      const append = response.appends[0];
      state.rewinds = 0;
      entry.resolve({
        partition: append.partition,
        firstSequence: entry.firstSequence,
        count: append.record_count,
        baseOffset: Number(append.base_offset),
      });
    } else if (error.retriable || (state.rewinding && error.reason === "OUT_OF_ORDER_SEQUENCE")) {
      const reason = error.reason || `code ${error.code}`;
      this.stats.retry_reasons[reason] = (this.stats.retry_reasons[reason] || 0) + 1;
      if (!state.rewinding) {
        this.reroute(state, error);
      }
      state.rewinding = true;
      state.redo.push(entry);
    } else {
      entry.reject(new WeirCallError(`produce to partition ${entry.partition}`, error));
    }
    this.resumeWhenAnswered(state);
    this.pump(state);
  }

  // Where a partition goes after the first retriable error of a round.
  reroute(state, error) {
    let address = state.address;
    if (error.reason === "NOT_LEADER") {
      const leader = error.metadata.leader_address;
      if (this.clients.has(leader)) {
        address = leader;
      }
    } else if (error.code === 14 && (error.reason === "" || error.reason === "SHUTTING_DOWN")) {
      const i = this.addresses.indexOf(state.address);
      address = this.addresses[(i + 1) % this.addresses.length];
    }
    if (address !== state.address) {
      state.address = address;
      this.stats.route_changes += 1;
    }
  }

  resumeWhenAnswered(state) {
    if (!state.rewinding || state.inflight.length > 0 || state.timer) {
      return;
    }
    const delayMs = Math.min(BACKOFF_MS_MAX, BACKOFF_MS_MIN * 2 ** state.rewinds);
    state.rewinds += 1;
    state.timer = setTimeout(() => {
      state.timer = null;
      state.rewinding = false;
      const redo = state.redo.sort((a, b) => a.firstSequence - b.firstSequence);
      state.redo = [];
      const again = [];
      for (const entry of redo) {
        entry.attempts += 1;
        if (entry.attempts > ATTEMPTS_MAX) {
          entry.reject(new Error(`partition ${state.partition}: gave up after ${ATTEMPTS_MAX} attempts`));
        } else {
          this.stats.retried_requests += 1;
          again.push(entry);
        }
      }
      state.queue = [...again, ...state.queue];
      this.pump(state);
    }, delayMs);
  }
}

module.exports = { IdempotentProducer, INFLIGHT_PER_PARTITION_MAX };
