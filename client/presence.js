// Presence for browsers (and Node) on top of an @microsoft/signalr HubConnection to the connection mapper.
// It speaks the messages in ../README.md ("SignalR messages"): it sends join, leave, watch, unwatch, setStatus,
// sync, watchOccupancy and unwatchOccupancy, and merges `presence`, `presenceSync`, `presenceBatch` and `occupancy`
// by version only.
import { foldUserName, normalizeUserName } from "./fold.js";

export { foldUserName, normalizeUserName } from "./fold.js";

export const MAX_USERS_PER_CALL = 100;
export const MAX_STATUS_LENGTH = 64;
const ROOM = /^[A-Za-z0-9._-]{1,64}$/;
const CONTROL = /[\p{Cc}\p{Cs}]/u;
const CONNECTED = "Connected"; // signalR.HubConnectionState.Connected
const EVENTS = ["change", "sync", "members", "occupancy", "error"];
const DEFAULTS = { retries: 5, retryDelayMs: 250, maxRetryDelayMs: 8000 };

/** Throw unless `room` is a room name the server accepts (1-64 letters, digits, '-', '_', '.'). */
export function checkRoom(room) {
  if (typeof room !== "string") throw new TypeError("room must be a string");
  if (!ROOM.test(room)) throw new RangeError("room must be 1-64 characters of letters, digits, '-', '_' and '.'");
  return room;
}

/** Return the distinct user names of a watch or unwatch list (at most 100), or throw. */
export function checkUsers(users) {
  if (!Array.isArray(users)) throw new TypeError("users must be an array of user names");
  if (users.length > MAX_USERS_PER_CALL) throw new RangeError(`at most ${MAX_USERS_PER_CALL} users per call`);
  const names = new Map();
  for (const user of users) {
    const name = normalizeUserName(user);
    if (!names.has(foldUserName(name))) names.set(foldUserName(name), name);
  }
  return [...names.values()];
}

/** Return a status the server accepts (null clears it), or throw. */
export function checkStatus(status) {
  if (status === null || status === undefined || status === "") return null;
  if (typeof status !== "string") throw new TypeError("status must be a string or null");
  const normalized = status.normalize("NFC");
  if ([...normalized].length > MAX_STATUS_LENGTH) {
    throw new RangeError(`status must be at most ${MAX_STATUS_LENGTH} characters`);
  }
  if (CONTROL.test(normalized)) throw new RangeError("status must not hold control characters");
  return normalized;
}

/** Follow presence over `connection`; see client/README.md. */
export function trackPresence(connection, options = {}) {
  return new PresenceTracker(connection, options);
}

function stateOf(entry) {
  return Object.freeze({
    user: entry.user,
    online: entry.online,
    connections: entry.connections,
    status: entry.status ?? null,
    lastSeen: entry.lastSeen ?? null,
    version: entry.version,
  });
}

export class PresenceTracker {
  #connection;
  #options;
  #states = new Map(); // folded user -> the highest-versioned state heard
  #rooms = new Map(); // room -> { members: Map<folded, name>, pages, since, synced }
  #watched = new Map(); // folded user -> name as asked
  #occupancy = new Map(); // room whose occupancy is watched -> the highest-versioned occupancy heard (or undefined)
  #status; // the status this tab asked for (undefined: never set)
  #handlers = new Map(EVENTS.map((event) => [event, new Set()]));
  #attempts = new Map(); // JSON of [call, arguments] -> retries made
  #quietUntil = 0; // Date.now() before which this tab holds its calls: the server said "too many calls"
  #timers = new Set();
  #listeners;
  #disposed = false;

  constructor(connection, options = {}) {
    if (!connection || typeof connection.on !== "function" || typeof connection.send !== "function") {
      throw new TypeError("trackPresence needs a @microsoft/signalr HubConnection");
    }
    this.#connection = connection;
    this.#options = { ...DEFAULTS, random: Math.random, ...options };
    this.#listeners = {
      presence: (entry) => this.#heard(entry),
      presenceSync: (snapshot) => this.#synced(snapshot),
      presenceBatch: (batch) => this.#batched(batch),
      occupancy: (occupancy) => this.#occupied(occupancy),
      room: (change) => this.#membership(change),
      error: (error) => this.#failed(error),
    };
    for (const [target, listener] of Object.entries(this.#listeners)) connection.on(target, listener);
    // After an automatic reconnect the connection is a new one: its watches (of users and of occupancy) and status
    // are gone.
    connection.onreconnected?.(() => {
      if (!this.#disposed) this.resync();
    });
  }

  /** Make this tab's user a member of `room` and receive its members' presence. */
  join(room) {
    checkRoom(room);
    this.#ready();
    if (!this.#rooms.has(room)) this.#rooms.set(room, { members: new Map(), pages: null, since: [], synced: false });
    return this.#call("join", room);
  }

  /** End the membership of `room`. */
  leave(room) {
    checkRoom(room);
    this.#ready();
    this.#rooms.delete(room);
    return this.#call("leave", room);
  }

  /** Receive the presence of `users` (at most 100 names), starting with their snapshot. */
  watch(users) {
    const names = checkUsers(users);
    this.#ready();
    for (const name of names) this.#watched.set(foldUserName(name), name);
    return this.#call("watch", names);
  }

  /** Stop receiving the presence of `users`. */
  unwatch(users) {
    const names = checkUsers(users);
    this.#ready();
    for (const name of names) this.#watched.delete(foldUserName(name));
    return this.#call("unwatch", names);
  }

  /** Receive the occupancy of `room` (its members and how many are online), whether or not this tab joined it. */
  watchOccupancy(room) {
    checkRoom(room);
    this.#ready();
    if (!this.#occupancy.has(room)) this.#occupancy.set(room, undefined);
    return this.#call("watchOccupancy", room);
  }

  /** Stop receiving the occupancy of `room`, and forget it. */
  unwatchOccupancy(room) {
    checkRoom(room);
    this.#ready();
    this.#occupancy.delete(room);
    return this.#call("unwatchOccupancy", room);
  }

  /** Set this tab's status (a string of at most 64 characters; null or "" clears it). */
  setStatus(status) {
    const value = checkStatus(status);
    this.#ready();
    this.#status = value;
    return this.#call("setStatus", value);
  }

  /** Ask again for the snapshot of a joined room. */
  sync(room) {
    checkRoom(room);
    this.#ready();
    if (!this.#rooms.has(room)) throw new RangeError(`not tracking room ${room}: join it first`);
    return this.#call("sync", room);
  }

  /** Send again every join, watch, occupancy watch and the status (after the app restarted the connection itself). */
  resync() {
    this.#ready();
    const calls = [...this.#rooms.keys()].map((room) => this.#call("join", room));
    const names = [...this.#watched.values()];
    for (let start = 0; start < names.length; start += MAX_USERS_PER_CALL) {
      calls.push(this.#call("watch", names.slice(start, start + MAX_USERS_PER_CALL)));
    }
    for (const room of this.#occupancy.keys()) calls.push(this.#call("watchOccupancy", room));
    if (this.#status !== undefined) calls.push(this.#call("setStatus", this.#status));
    return Promise.all(calls).then(() => undefined);
  }

  /** Return the current presence of `user` (any case), or undefined if nothing was heard of them. */
  of(user) {
    return this.#states.get(foldUserName(user));
  }

  /** Return the members of a joined room as last synced and since announced, each with their presence. */
  members(room) {
    checkRoom(room);
    const tracked = this.#rooms.get(room);
    if (!tracked) return [];
    return [...tracked.members].map(([key, name]) => this.#states.get(key) ?? stateOf(unknown(name)));
  }

  /** Return the latest occupancy `{room, members, online, version}` heard of a watched room, or undefined. */
  occupancy(room) {
    checkRoom(room);
    return this.#occupancy.get(room);
  }

  /** Return the rooms this tracker has joined. */
  rooms() {
    return [...this.#rooms.keys()];
  }

  /** Return the users this tracker watches, as asked. */
  watched() {
    return [...this.#watched.values()];
  }

  /** Call `handler` on "change" (user, state, previous), "sync" (room or null), "members" (room, user, joined),
   * "occupancy" (occupancy) or "error" (the server's error object); return a function that removes it. */
  on(event, handler) {
    if (!this.#handlers.has(event)) throw new RangeError(`unknown event ${event}: one of ${EVENTS.join(", ")}`);
    if (typeof handler !== "function") throw new TypeError("handler must be a function");
    this.#handlers.get(event).add(handler);
    return () => this.off(event, handler);
  }

  /** Remove a handler. */
  off(event, handler) {
    this.#handlers.get(event)?.delete(handler);
  }

  /** Stop listening to the connection and cancel pending retries. */
  dispose() {
    this.#disposed = true;
    for (const [target, listener] of Object.entries(this.#listeners)) this.#connection.off(target, listener);
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
  }

  #ready() {
    if (this.#disposed) throw new Error("this presence tracker was disposed");
    if (this.#connection.state !== CONNECTED) {
      throw new Error(`the connection is ${this.#connection.state ?? "not started"}: await connection.start() first`);
    }
  }

  #call(method, argument) {
    this.#attempts.delete(JSON.stringify([method, [argument]])); // a fresh call starts its retries afresh
    const wait = this.#quietUntil - Date.now();
    if (wait <= 0) return this.#connection.send(method, argument);
    // Over its budget a moment ago: the server would refuse it, silently within a second. Send it when it may pass.
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#timers.delete(timer);
        if (this.#disposed) return resolve();
        this.#connection.send(method, argument).then(resolve, reject);
      }, wait);
      this.#timers.add(timer);
    });
  }

  #emit(event, ...args) {
    for (const handler of this.#handlers.get(event)) {
      try {
        handler(...args);
      } catch (error) {
        queueMicrotask(() => {
          throw error; // a failing handler must not stop the others, nor the merge
        });
      }
    }
  }

  #heard(entry) {
    if (!isEntry(entry)) return;
    const key = foldUserName(entry.user);
    const previous = this.#states.get(key);
    if (previous && previous.version >= entry.version) return; // a repeat, or older than what we hold
    const state = stateOf(entry);
    this.#states.set(key, state);
    this.#emit("change", state.user, state, previous);
  }

  /** A big room's members' changes, coalesced as `[user, online, connections, status, versionOffset, lastSeen]`
   * tuples: each one decodes to the `presence` message of the batch's room and merges as that message would. */
  #batched(batch) {
    if (!batch || typeof batch.room !== "string" || !Number.isSafeInteger(batch.base)) return;
    if (!Array.isArray(batch.users)) return;
    for (const tuple of batch.users) {
      const entry = batchEntry(batch.room, batch.base, tuple);
      if (entry) this.#heard(entry);
    }
  }

  #occupied(occupancy) {
    if (!isOccupancy(occupancy) || !this.#occupancy.has(occupancy.room)) return; // not watched (any more)
    const previous = this.#occupancy.get(occupancy.room);
    if (previous && previous.version >= occupancy.version) return; // a repeat, or older than what we hold
    const { room, members, online, version } = occupancy;
    const state = Object.freeze({ room, members, online, version });
    this.#occupancy.set(room, state);
    this.#emit("occupancy", state);
  }

  #synced(snapshot) {
    if (!snapshot || !Array.isArray(snapshot.users)) return;
    for (const entry of snapshot.users) this.#heard(entry);
    if (snapshot.room === null || snapshot.room === undefined) {
      this.#emit("sync", null);
      return;
    }
    const tracked = this.#rooms.get(snapshot.room);
    if (!tracked) return;
    const page = Number(snapshot.page ?? 1);
    const pages = Number(snapshot.pages ?? 1);
    if (!tracked.pages || tracked.pages.total !== pages || tracked.pages.seen.has(page)) {
      tracked.pages = { total: pages, seen: new Map() }; // a page seen already starts a newer snapshot
      tracked.since = [];
    }
    tracked.pages.seen.set(page, snapshot.users.filter(isEntry));
    if (tracked.pages.seen.size < pages) return;
    const members = new Map();
    for (const users of tracked.pages.seen.values()) {
      for (const entry of users) members.set(foldUserName(entry.user), entry.user);
    }
    for (const change of tracked.since) applyMembership(members, change); // heard while the pages came
    Object.assign(tracked, { members, pages: null, since: [], synced: true });
    this.#emit("sync", snapshot.room);
  }

  #membership(change) {
    if (!change || typeof change.room !== "string" || typeof change.user !== "string") return;
    const tracked = this.#rooms.get(change.room);
    if (!tracked) return;
    applyMembership(tracked.members, change);
    if (tracked.pages) tracked.since.push(change);
    this.#emit("members", change.room, change.user, Boolean(change.joined));
  }

  #failed(error) {
    if (!error || typeof error !== "object") return;
    if (error.call === "join" && error.refused === true) this.#rooms.delete(error.room); // closed to this user
    if (error.retry === true && Array.isArray(error.arguments) && this.#stillWanted(error.call, error.arguments)) {
      const key = JSON.stringify([error.call, error.arguments]);
      const made = this.#attempts.get(key) ?? 0;
      if (made < this.#options.retries) {
        this.#attempts.set(key, made + 1);
        this.#later(made, () => this.#resend(error.call, error.arguments), this.#cooldown(error));
        return;
      }
      this.#attempts.delete(key);
    }
    this.#emit("error", error);
  }

  /** Whether a failed call still says what this tab wants (a later call may have superseded it). */
  #stillWanted(call, args) {
    const [argument] = args;
    switch (call) {
      case "join":
      case "sync":
        return this.#rooms.has(argument);
      case "leave":
        return !this.#rooms.has(argument);
      case "watch":
        return Array.isArray(argument) && argument.some((user) => this.#watched.has(safeFold(user)));
      case "unwatch":
        return Array.isArray(argument) && argument.some((user) => !this.#watched.has(safeFold(user)));
      case "setStatus":
        return this.#status === (argument ?? null);
      case "watchOccupancy":
        return this.#occupancy.has(argument);
      case "unwatchOccupancy":
        return !this.#occupancy.has(argument);
      default:
        return false; // not one of ours: the app's own calls are the app's to retry
    }
  }

  #resend(call, args) {
    if (this.#disposed || this.#connection.state !== CONNECTED || !this.#stillWanted(call, args)) return;
    let [argument] = args;
    if (call === "watch") argument = argument.filter((user) => this.#watched.has(safeFold(user)));
    if (call === "unwatch") argument = argument.filter((user) => !this.#watched.has(safeFold(user)));
    this.#connection.send(call, argument).catch((error) => this.#emit("error", { error: String(error), call }));
  }

  /** The wait a "too many calls" answer asks for (`retryAfter`, seconds), in ms; this tab's own calls hold till then,
   * and then the joins not answered yet and the status are sent again (the server drops, unanswered, what it refuses
   * within a second of that answer). */
  #cooldown(error) {
    const seconds = Number(error.retryAfter);
    if (!Number.isFinite(seconds) || seconds <= 0) return 0;
    const wait = Math.min(seconds * 1000, this.#options.maxRetryDelayMs);
    const first = this.#quietUntil <= Date.now();
    this.#quietUntil = Math.max(this.#quietUntil, Date.now() + wait);
    if (first) this.#later(0, () => this.#catchUp(error, 0), wait);
    return wait;
  }

  /** Send again, one round a second after a "too many calls", the joins still unanswered and the status. */
  #catchUp(answered, round) {
    if (this.#disposed || this.#connection.state !== CONNECTED) return;
    const rooms = [...this.#rooms].filter(([, tracked]) => !tracked.synced).map(([room]) => room);
    const calls = rooms
      .filter((room) => round > 0 || !(answered.call === "join" && answered.arguments?.[0] === room))
      .map((room) => ["join", room]);
    if (round === 0 && this.#status !== undefined && answered.call !== "setStatus") {
      calls.push(["setStatus", this.#status]);
    }
    for (const [method, argument] of calls) this.#call(method, argument).catch(() => undefined);
    if (rooms.length && round < this.#options.retries) {
      const timer = setTimeout(() => {
        this.#timers.delete(timer);
        this.#catchUp(answered, round + 1);
      }, Math.max(1000, this.#quietUntil - Date.now()));
      this.#timers.add(timer);
    }
  }

  #later(made, action, atLeastMs = 0) {
    const ceiling = Math.min(this.#options.maxRetryDelayMs, this.#options.retryDelayMs * 2 ** made);
    const delay = Math.max(atLeastMs, ceiling / 2 + (this.#options.random() * ceiling) / 2);
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      action();
    }, delay);
    this.#timers.add(timer);
  }
}

function isEntry(entry) {
  return Boolean(entry) && typeof entry.user === "string" && Number.isFinite(entry.version);
}

/** Return the `presence` message of `room` a `presenceBatch` tuple stands for, or undefined for a malformed one. */
function batchEntry(room, base, tuple) {
  if (!Array.isArray(tuple) || tuple.length !== 6) return undefined;
  const [user, online, connections, status, offset, lastSeen] = tuple;
  if (typeof user !== "string" || safeFold(user) === undefined) return undefined;
  if ((online !== 0 && online !== 1) || !Number.isSafeInteger(connections) || connections < 0) return undefined;
  if (status !== null && typeof status !== "string") return undefined;
  if (lastSeen !== null && typeof lastSeen !== "string") return undefined;
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(base + offset)) return undefined;
  return { user, online: online === 1, connections, status, lastSeen, version: base + offset, room };
}

function isOccupancy(occupancy) {
  return (
    Boolean(occupancy) &&
    typeof occupancy.room === "string" &&
    ["members", "online", "version"].every((field) => Number.isInteger(occupancy[field]))
  );
}

function unknown(name) {
  return { user: name, online: false, connections: 0, status: null, lastSeen: null, version: 0 };
}

function applyMembership(members, change) {
  const key = safeFold(change.user);
  if (key === undefined) return;
  if (change.joined) members.set(key, change.user);
  else members.delete(key);
}

function safeFold(user) {
  try {
    return foldUserName(user);
  } catch {
    return undefined;
  }
}
