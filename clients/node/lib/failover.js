"use strict";
// Which node a consumer subscribes on next, and how long it waits first: the
// rules docs/sdk.md ("Bootstrap lists and failover") gives the Python SDK,
// written down again for a client in another language. Pure bookkeeping, no
// I/O: the stream code asks, then acts.
//
// A stream that ends with a retriable error moves the consumer at once to
// the next address, round robin, or straight to the leader a NOT_LEADER
// names. Only when every address failed in a row without a served response
// in between does it wait: BACKOFF_MS_MIN doubling per further round up to
// BACKOFF_MS_MAX, with ±20 % jitter from the injected random function. After
// ATTEMPTS_PER_ADDRESS_MAX failures per known address in a row it gives up.

const BACKOFF_MS_MIN = 50;
const BACKOFF_MS_MAX = 5000;
const ATTEMPTS_PER_ADDRESS_MAX = 10;
const ADDRESSES_MAX = 64;
const JITTER = 0.2;

const UNAVAILABLE = 14;
const UNKNOWN = 2;
const INTERNAL = 13;

// Whether a consume stream that ended with `error` (from errors.callError)
// is worth subscribing again: the broker says so (UNAVAILABLE reasons,
// SESSION_EXPIRED, MEMBER_REMOVED), or the connection died under the call.
// gRPC sometimes reports a connection killed under a call as INTERNAL or
// UNKNOWN without a reason; the broker itself never answers those without one.
function isRetriableEnd(error) {
  if (error.retriable) {
    return true;
  }
  return error.reason === "" && [UNAVAILABLE, UNKNOWN, INTERNAL].includes(error.code);
}

// A small seeded generator (mulberry32), so a run's jitter reproduces from its seed.
function seededRandom(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class NodeRotation {
  constructor(addresses, { random = Math.random, first = 0 } = {}) {
    if (addresses.length === 0 || addresses.length > ADDRESSES_MAX) {
      throw new RangeError(`a bootstrap list holds 1 to ${ADDRESSES_MAX} addresses, not ${addresses.length}`);
    }
    this.addresses = [...new Set(addresses)];
    this.index = first % this.addresses.length;
    this.random = random;
    this.failuresInRow = 0;
    this.moves = 0;
  }

  current() {
    return this.addresses[this.index];
  }

  // The stream on current() served something: failures no longer count.
  served() {
    this.failuresInRow = 0;
  }

  // The stream on current() ended with retriable `error`. Moves on and
  // answers how long to wait before subscribing there; throws `error` back
  // when the attempts are used up.
  failed(error) {
    this.failuresInRow += 1;
    if (this.failuresInRow >= ATTEMPTS_PER_ADDRESS_MAX * this.addresses.length) {
      throw error;
    }
    const leader = error.reason === "NOT_LEADER" ? error.metadata.leader_address : "";
    if (leader) {
      if (!this.addresses.includes(leader) && this.addresses.length < ADDRESSES_MAX) {
        this.addresses.push(leader);
      }
      const known = this.addresses.indexOf(leader);
      this.index = known >= 0 ? known : (this.index + 1) % this.addresses.length;
    } else {
      this.index = (this.index + 1) % this.addresses.length;
    }
    this.moves += 1;
    // Moves within a round are immediate: the next node is probably fine.
    if (this.failuresInRow % this.addresses.length !== 0) {
      return 0;
    }
    const rounds = this.failuresInRow / this.addresses.length;
    const backoffMs = Math.min(BACKOFF_MS_MAX, BACKOFF_MS_MIN * 2 ** (rounds - 1));
    return Math.round(backoffMs * (1 - JITTER + 2 * JITTER * this.random()));
  }
}

module.exports = {
  NodeRotation,
  isRetriableEnd,
  seededRandom,
  BACKOFF_MS_MIN,
  BACKOFF_MS_MAX,
  ATTEMPTS_PER_ADDRESS_MAX,
};
