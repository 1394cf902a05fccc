-- Sends what brume.mist makes of each event, for the golden file.
local mist = require "brume.mist"

return {
  topics = "*",
  on_event = function(ev, ctx)
    local diff = {}
    if ctx.topic == "audits" then
      for _, c in ipairs(mist.audit_diff(ev)) do
        diff[#diff + 1] = ("%s: %s -> %s"):format(c.path, tostring(c.before), tostring(c.after))
      end
    end
    brume.send("out", {
      type = mist.alarm_type(ev),
      is_rogue = mist.is(ev, "rogue_ap"),
      ts = mist.timestamp(ev),
      time = mist.time(ev),
      device = mist.device_name(ev),
      mac = mist.mac(ev.mac or ev.ap),
      site = mist.site(ev),
      diff = diff,
    })
  end,
}
