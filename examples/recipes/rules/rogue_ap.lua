-- Rogue APs to Slack, once per BSSID a day.
--
-- Mist raises a rogue-AP alarm (`rogue_ap`; `rogue-ap-detected` in older
-- payloads) whenever its APs hear the rogue again, listing every BSSID it
-- heard. #secops wants each BSSID once a day, however many alarms, sites
-- and APs report it: brume.once keeps the mark for 24 hours, shared by
-- every worker and kept across restarts. An alarm whose BSSIDs were all
-- reported today sends nothing.
local mist = require "brume.mist"

return {
  topics = "alarms",
  where = { type = { "rogue_ap", "rogue-ap-detected" } },
  on_event = function(ev, ctx)
    local new = {}
    for _, bssid in ipairs(ev.bssids or {}) do
      local b = mist.mac(bssid)
      if b and brume.once("rogue-ap:" .. b, "24h") then new[#new + 1] = b end
    end
    if #new == 0 then return end
    brume.send("secops", {
      title = ("Rogue AP%s at %s"):format(#new == 1 and "" or "s", mist.site(ev)),
      text = ("New today: %s. SSIDs heard: %s."):format(
        table.concat(new, ", "), table.concat(ev.ssids or {}, ", ")),
      severity = "warning",
      fields = {
        { "heard by", table.concat(ev.aps or {}, ", ") },
        { "first seen", mist.time(ev.timestamp) },
        { "alarm", ev.id },
      },
    })
  end,
}
