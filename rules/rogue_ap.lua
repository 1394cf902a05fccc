-- Rogue APs: Mist raises an `alarms` event when its APs hear an access point
-- that is not part of the organisation but is seen on its wired network.
-- The alarm type is `rogue_ap` in Mist's alarm definitions and
-- `rogue-ap-detected` in older payloads: this rule takes both.
--
-- Each alarm becomes one message to the `secops` target (a file in the
-- example config; point it at Slack or a SIEM in yours).

local mist = require "brume.mist"

local function list(t, limit)
  if type(t) ~= "table" then return "none" end
  local shown = {}
  for i = 1, math.min(#t, limit) do shown[i] = tostring(t[i]) end
  if #t > limit then shown[#shown + 1] = ("and %d more"):format(#t - limit) end
  return table.concat(shown, ", ")
end

return {
  topics = { "alarms" },
  where = { type = { "rogue_ap", "rogue-ap-detected" } },
  on_event = function(ev, ctx)
    local bssids, aps = ev.bssids or {}, ev.aps or {}
    brume.send("secops", {
      title = "Rogue AP detected",
      text = ("%d rogue BSSID%s heard by %d AP%s; SSIDs: %s"):format(
        #bssids, #bssids == 1 and "" or "s", #aps, #aps == 1 and "" or "s", list(ev.ssids, 5)),
      severity = "warning",
      fields = {
        site = mist.site(ev),
        org = ev.org_id,
        bssids = list(bssids, 10),
        seen_by = list(aps, 10),
        first_seen = mist.time(ev.timestamp),
        last_seen = mist.time(ev.last_seen),
        count = ev.count,
      },
      dedup_key = "rogue_ap:" .. tostring(ev.site_id) .. ":" .. tostring(bssids[1]),
    })
  end,
}
