"use strict";
// One subscription over as many Consume streams as failures take.
//
// A stream that ends with a retriable error (lib/failover.js says which) is
// followed by a new stream on the node NodeRotation names, after its
// backoff; the handler's subscribe() says where the new one starts (the
// assign-mode consumer's next positions, a member's id). A stream that ends
// otherwise fails the run, and so does a handler that throws: a broken check
// is a broken client. Each stream has its own credit books (credit does not
// carry over); the handler takes each batch synchronously, so its credit is
// counted as taken when the handler returns, and goes back once half of
// either window was taken, after `grantDelayMs` when the caller wants to read
// slowly.
//
// The handler: subscribe() -> Subscribe without credit; onSubscribed(s);
// onBatch(batch); onResponse(response) for every other kind; onStreamEnd(error)
// once per stream (error null after close()); it must not throw there.

const { callError, streamError, WeirCallError } = require("./errors");
const { CreditBooks } = require("./credit");
const { isRetriableEnd } = require("./failover");

// A stream that served this long counts as served even if it sent nothing
// but `Subscribed` (an idle queue consumer), so its failure starts a new row.
const STABLE_MS = 5000;

class ResumingStream {
  constructor({ clientFor, rotation, messageWindow, byteWindow, handler, grantDelayMs = 0 }) {
    this.clientFor = clientFor;
    this.rotation = rotation;
    this.messageWindow = messageWindow;
    this.byteWindow = byteWindow;
    this.handler = handler;
    this.grantDelayMs = grantDelayMs;
    this.stream = null;
    this.reopenTimer = null;
    this.closing = false;
    this.done = false;
    this.lastWriteMs = 0;
    this.stats = { streams: 0, resubscribes: 0, ends: [], batches: 0, records: 0, notices: 0, grants: 0 };
    this.finished = new Promise((resolve, reject) => {
      this.resolveRun = resolve;
      this.rejectRun = reject;
    });
  }

  // Opens the first stream; resolves with the stats once close() is done,
  // rejects with the error that ended the run.
  run() {
    this.open();
    return this.finished;
  }

  // Whether a subscribed stream is open to write on.
  isOpen() {
    return this.stream !== null && this.stream.subscribed && !this.closing;
  }

  // Writes on the open stream; false when there is none (between streams).
  write(request) {
    if (!this.isOpen()) {
      return false;
    }
    this.stream.call.write(request);
    this.lastWriteMs = Date.now();
    return true;
  }

  // Half-closes the stream (the broker then ends it OK) and resolves when it ended.
  close() {
    this.closing = true;
    if (this.reopenTimer !== null) {
      clearTimeout(this.reopenTimer);
      this.reopenTimer = null;
      this.finish(null);
    } else if (this.stream !== null) {
      this.stream.call.end();
    }
    return this.finished;
  }

  // Ends the run with `error`: the stream is cancelled, nothing reopens.
  fail(error) {
    if (this.done) {
      return;
    }
    const stream = this.stream;
    if (stream !== null) {
      this.stream = null;
      stream.ended = true;
      this.stopGrant(stream);
      stream.call.cancel();
      this.handler.onStreamEnd({ code: 1, reason: "", message: String(error), metadata: {}, retriable: false });
    }
    this.finish(error);
  }

  finish(error) {
    if (this.done) {
      return;
    }
    this.done = true;
    clearTimeout(this.reopenTimer);
    if (error === null) {
      this.resolveRun(this.stats);
    } else {
      this.rejectRun(error);
    }
  }

  open() {
    this.reopenTimer = null;
    const address = this.rotation.current();
    const call = this.clientFor(address).Consume();
    const stream = {
      address,
      call,
      subscribed: false,
      subscribedAtMs: 0,
      ended: false,
      books: new CreditBooks(this.messageWindow, this.byteWindow),
      grantTimer: null,
    };
    this.stream = stream;
    this.stats.streams += 1;
    call.on("data", (response) => this.onData(stream, response));
    call.on("error", (err) => this.onEnd(stream, callError(err)));
    call.on("end", () => this.onEnd(stream, null));
    const credit = { messages: String(this.messageWindow), bytes: String(this.byteWindow) };
    call.write({ subscribe: { ...this.handler.subscribe(), credit } });
    this.lastWriteMs = Date.now();
  }

  onData(stream, response) {
    if (stream !== this.stream || stream.ended) {
      return;
    }
    try {
      if (!stream.subscribed) {
        if (response.kind !== "subscribed") {
          throw new Error(`the first consume response is ${response.kind}, not subscribed`);
        }
        stream.subscribed = true;
        stream.subscribedAtMs = Date.now();
        const extra = stream.books.widenTo(Number(response.subscribed.record_bytes_max));
        if (extra > 0) {
          this.write({ credit: { messages: "0", bytes: String(extra) } });
        }
        this.handler.onSubscribed(response.subscribed);
        return;
      }
      this.rotation.served();
      if (response.kind === "batch") {
        const { records } = response.batch;
        const bytes = stream.books.receive(records);
        this.stats.batches += 1;
        this.stats.records += records.length;
        this.handler.onBatch(response.batch);
        stream.books.take(records.length, bytes);
        this.grantWhenDue(stream);
      } else if (response.kind === "notice") {
        // CREDIT_TOO_SMALL informs; a client that hands back what it takes,
        // with a window of at least record_bytes_max, never waits for long.
        this.stats.notices += 1;
        const notice = streamError(response.notice);
        if (notice.reason !== "CREDIT_TOO_SMALL") {
          throw new Error(`unexpected notice ${JSON.stringify(notice)}`);
        }
      } else {
        this.handler.onResponse(response);
      }
    } catch (error) {
      this.fail(error);
    }
  }

  grantWhenDue(stream) {
    if (stream.grantTimer !== null) {
      return;
    }
    const grant = () => {
      stream.grantTimer = null;
      if (stream !== this.stream) {
        return;
      }
      const credit = stream.books.due();
      if (credit !== null && this.write({ credit })) {
        this.stats.grants += 1;
      }
    };
    if (this.grantDelayMs > 0) {
      stream.grantTimer = setTimeout(grant, this.grantDelayMs);
    } else {
      grant();
    }
  }

  stopGrant(stream) {
    clearTimeout(stream.grantTimer);
    stream.grantTimer = null;
  }

  onEnd(stream, endError) {
    if (stream.ended) {
      return;
    }
    stream.ended = true;
    this.stopGrant(stream);
    if (stream !== this.stream) {
      return;
    }
    this.stream = null;
    if (endError === null && this.closing) {
      this.handler.onStreamEnd(null);
      this.finish(null);
      return;
    }
    // The broker ends a stream OK only after the client's half-close.
    const error = endError ?? {
      code: 14,
      reason: "",
      domain: "",
      message: "the stream ended without being asked to",
      metadata: {},
      retriable: true,
    };
    this.stats.ends.push({ address: stream.address, code: error.code, reason: error.reason, message: error.message });
    this.handler.onStreamEnd(error);
    if (this.closing) {
      this.finish(null);
      return;
    }
    if (!isRetriableEnd(error)) {
      this.finish(new WeirCallError("consume", error));
      return;
    }
    if (stream.subscribed && Date.now() - stream.subscribedAtMs >= STABLE_MS) {
      this.rotation.served();
    }
    let delayMs;
    try {
      delayMs = this.rotation.failed(error);
    } catch {
      this.finish(new WeirCallError(`consume: gave up after ${this.rotation.failuresInRow} failures in a row`, error));
      return;
    }
    this.stats.resubscribes += 1;
    this.reopenTimer = setTimeout(() => this.open(), delayMs);
  }
}

module.exports = { ResumingStream };
