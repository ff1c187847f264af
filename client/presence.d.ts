// Types of the presence library (presence.js). The messages it speaks are in README.md.
import type { HubConnection } from "@microsoft/signalr";

/** A user's presence as the server recorded it; of two states of one user, the higher version is current. */
export interface PresenceState {
  readonly user: string;
  readonly online: boolean;
  readonly connections: number;
  readonly status: string | null;
  /** ISO 8601 time of the end of the user's last connection, while offline. */
  readonly lastSeen: string | null;
  /** Grows with every change of the user's state; 0 for a user never seen. */
  readonly version: number;
}

/** One member's state in a `presenceBatch`: `[user, online, connections, status, versionOffset, lastSeen]`.
 * `online` is 1 or 0; `connections` an integer >= 0; `versionOffset` an integer >= 0, the state's version being the
 * batch's `base` plus it; `lastSeen` an ISO 8601 time (as a `presence` message's), or null. The tracker decodes it to
 * the `presence` message `{user, online, connections, status, lastSeen, version, room}` of the batch's room and merges
 * it by version as that message; a malformed tuple is skipped (the others of the batch are kept). */
export type PresenceBatchEntry = readonly [
  user: string,
  online: 0 | 1,
  connections: number,
  status: string | null,
  versionOffset: number,
  lastSeen: string | null,
];

/** A `presenceBatch` message: a big room's members' changes, coalesced in a compact form (about 30 fit in one billed
 * 2 KB SignalR message). The tracker handles it itself: it emits the entries' `change` events, none for the batch. */
export interface PresenceBatch {
  readonly room: string;
  /** Milliseconds: each entry's version is `base + versionOffset`. */
  readonly base: number;
  readonly users: readonly PresenceBatchEntry[];
}

/** An `occupancy` message: how many members a watched room has and how many of them are online; of two occupancies
 * of one room, the higher version is current. */
export interface Occupancy {
  readonly room: string;
  readonly members: number;
  readonly online: number;
  /** Grows with every change of the room's occupancy. */
  readonly version: number;
}

/** An `error` message of the server: the call it answers, and, when `retry` is true, the call's arguments. */
export interface PresenceError {
  readonly error: string;
  readonly call?: string;
  readonly retry?: boolean;
  /** "too many calls": the seconds to wait before the connection's budget pays for a call again. */
  readonly retryAfter?: number;
  readonly arguments?: unknown[];
  readonly [detail: string]: unknown;
}

export interface PresenceEvents {
  change: (user: string, state: PresenceState, previous: PresenceState | undefined) => void;
  /** A room's snapshot arrived in full (`null`: a watch's snapshot). */
  sync: (room: string | null) => void;
  members: (room: string, user: string, joined: boolean) => void;
  /** A watched room's occupancy changed (a newer version than the one held). */
  occupancy: (occupancy: Occupancy) => void;
  error: (error: PresenceError) => void;
}

export interface TrackOptions {
  /** How often a call answered `retry: true` is sent again before its error reaches `on("error")` (default 5). */
  retries?: number;
  /** The first retry waits about this long, doubling each time (default 250). */
  retryDelayMs?: number;
  /** No retry waits longer (default 8000). */
  maxRetryDelayMs?: number;
  /** A source of numbers in [0, 1) for the jitter (default Math.random). */
  random?: () => number;
}

export declare class PresenceTracker {
  constructor(connection: HubConnection, options?: TrackOptions);
  join(room: string): Promise<void>;
  leave(room: string): Promise<void>;
  watch(users: string[]): Promise<void>;
  unwatch(users: string[]): Promise<void>;
  watchOccupancy(room: string): Promise<void>;
  unwatchOccupancy(room: string): Promise<void>;
  setStatus(status: string | null): Promise<void>;
  sync(room: string): Promise<void>;
  resync(): Promise<void>;
  of(user: string): PresenceState | undefined;
  members(room: string): PresenceState[];
  occupancy(room: string): Occupancy | undefined;
  rooms(): string[];
  watched(): string[];
  on<E extends keyof PresenceEvents>(event: E, handler: PresenceEvents[E]): () => void;
  off<E extends keyof PresenceEvents>(event: E, handler: PresenceEvents[E]): void;
  dispose(): void;
}

export declare function trackPresence(connection: HubConnection, options?: TrackOptions): PresenceTracker;
export declare function foldUserName(name: string): string;
export declare function normalizeUserName(name: string, what?: string): string;
export declare function checkRoom(room: string): string;
export declare function checkUsers(users: string[]): string[];
export declare function checkStatus(status: string | null): string | null;
export declare const MAX_USERS_PER_CALL: 100;
export declare const MAX_STATUS_LENGTH: 64;
