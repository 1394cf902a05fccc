-- Occupancy alerts to Slack: a zone over its limit, at most once per zone
-- every 30 minutes.
--
-- An `occupancy-alerts` event holds a list of alert_events, one per zone
-- that passed its occupancy limit (or its compliance threshold). Mist keeps
-- sending them while the zone stays full: brume.throttle lets one message
-- per zone through every 30 minutes.
local mist = require "brume.mist"

return {
  topics = "occupancy-alerts",
  on_event = function(ev, ctx)
    for _, a in ipairs(ev.alert_events or {}) do
      if brume.throttle("occupancy:" .. tostring(a.zone_id), 1, "30m") then
        brume.send("facilities", {
          title = ("Zone %s is over its occupancy limit"):format(a.zone_name or a.zone_id),
          text = ("%s people, limit %s (%s)"):format(a.current_occupancy, a.occupancy_limit,
                                                    a.type),
          severity = "warning",
          fields = { { "site", mist.site(ev) }, { "zone", a.zone_id }, { "map", a.map_id } },
        })
      end
    end
  end,
}
