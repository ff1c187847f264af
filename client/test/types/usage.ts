// Compiled (never run) by types.test.mjs: the declarations in presence.d.ts describe the library as used.
import * as signalR from "@microsoft/signalr";
import { foldUserName, trackPresence, type Occupancy, type PresenceState } from "../../presence.js";

const connection = new signalR.HubConnectionBuilder().withUrl("/api").withAutomaticReconnect().build();
const presence = trackPresence(connection, { retries: 3, retryDelayMs: 100 });
const off: () => void = presence.on("change", (user: string, state: PresenceState, previous?: PresenceState) => {
  const online: boolean = state.online;
  const seen: string | null = state.lastSeen;
  void [user, online, seen, previous?.version];
});
presence.on("sync", (room: string | null) => void room);
presence.on("members", (room: string, user: string, joined: boolean) => void [room, user, joined]);
presence.on("occupancy", (occupancy: Occupancy) => void [occupancy.room, occupancy.members, occupancy.online]);
presence.on("error", (error) => void [error.error, error.call, error.retry]);
off();

async function use(): Promise<void> {
  await connection.start();
  await presence.join("lobby");
  await presence.watch(["ada", "bob"]);
  await presence.setStatus(null);
  await presence.watchOccupancy("lobby");
  const lobby: Occupancy | undefined = presence.occupancy("lobby");
  const online: number | undefined = lobby?.online;
  await presence.unwatchOccupancy("lobby");
  const members: PresenceState[] = presence.members("lobby");
  const ada: PresenceState | undefined = presence.of("ADA");
  const key: string = foldUserName("Straße");
  void [members, ada, key, online];
}
void use;
