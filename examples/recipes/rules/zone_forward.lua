-- Clients and assets entering or leaving zones (and virtual beacons),
-- forwarded to a webhook, e.g. a room-booking or badge system.
--
-- `zone` and `vbeacon` events say who (a Wi-Fi client's mac, an asset, an
-- SDK client) entered or left which zone or beacon. The receiving system
-- wants one small JSON object per move, signed (the target's secret signs
-- it as Standard Webhooks do), not Mist's envelope. `raw` sends the table
-- as the body, as it is. These topics come through the `location` source,
-- which does not dedupe (see brume.lua).
return {
  topics = { "zone", "vbeacon" },
  where = { trigger = { "enter", "exit" } },
  on_event = function(ev, ctx)
    brume.send("locations", {
      raw = {
        event = ev.trigger,              -- "enter" or "exit"
        place = ctx.topic,               -- "zone" or "vbeacon"
        place_id = ev.zone_id or ev.vbeacon_id,
        who = ev.mac or ev.asset_id or ev.id,
        kind = ev.type,                  -- "wifi", "asset", "sdk"
        site_id = ev.site_id,
        map_id = ev.map_id,
        at = ev.timestamp,
      },
    })
  end,
}
