-- An AP or a switch down for 5 minutes pages on-call through PagerDuty;
-- the page resolves when it comes back.
--
-- APs and switches drop off for a few seconds when they reboot or lose an
-- uplink: a page for each would train people to ignore pages. brume.holddown
-- waits 5 minutes after AP_DISCONNECTED / SW_DISCONNECTED; if the device is
-- back (AP_CONNECTED / SW_CONNECTED) before then, nothing is sent at all.
-- Otherwise it triggers, and the same dedup_key resolves the incident once
-- the device has been back for 2 minutes (so a flapping uplink does not
-- open and close it again and again). The wait is a durable timer: a
-- restart in the middle does not lose it.
local mist = require "brume.mist"

local down = { AP_DISCONNECTED = "AP", SW_DISCONNECTED = "Switch" }
local up = { AP_CONNECTED = "AP", SW_CONNECTED = "Switch" }

return require "brume.holddown" {
  topics = "device-events",
  where = { type = { "AP_DISCONNECTED", "AP_CONNECTED", "SW_DISCONNECTED", "SW_CONNECTED" } },
  key = function(ev) return mist.mac(ev.mac or ev.ap) end,
  down = function(ev) return down[ev.type] ~= nil end,
  up = function(ev) return up[ev.type] ~= nil end,
  after = "5m",
  stable = "2m",
  send = function(ev, action, ctx)
    local kind = down[ev.type] or up[ev.type]
    brume.send("oncall", {
      title = ("%s %s %s"):format(kind, ctx.key, action == "trigger" and "is down" or "is back"),
      text = action == "trigger"
        and ("Down since %s"):format(os.date("!%H:%M UTC", math.floor(ctx.since)))
        or "Connected again",
      severity = "critical",
      dedup_key = "device-down:" .. ctx.key,
      action = action,
      fields = { site = mist.site(ev), device = ctx.key },
    })
  end,
}
