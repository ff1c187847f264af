// Must not compile: types.test.mjs checks that the declarations refuse these.
import * as signalR from "@microsoft/signalr";
import { trackPresence } from "../../presence.js";

const presence = trackPresence(new signalR.HubConnectionBuilder().withUrl("/api").build());
presence.join(5);
presence.on("nothing", () => {});
presence.watch("ada");
presence.watchOccupancy(["lobby"]);
const count: string | undefined = presence.occupancy("lobby")?.online;
