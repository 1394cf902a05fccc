-- An AP that keeps going down and up: one Teams message when it starts
-- flapping, one when it has been steady for 30 minutes.
--
-- A single disconnect is device_down.lua's business (it waits 5 minutes,
-- and a flapping AP never stays down that long). brume.flap counts the
-- AP's connects and disconnects: 4 within any 10 minutes is flapping. The
-- times are kept in brume.state, the "steady again" wait in a timer.
return require "brume.flap" {
  topics = "device-events",
  where = { type = { "AP_DISCONNECTED", "AP_CONNECTED" } },
  key = function(ev) return ev.ap end,
  count = 4,
  within = "10m",
  quiet = "30m",
  keep = function(ev) return { ap = ev.ap, site_id = ev.site_id } end,
  send = function(ev, action, ctx)
    brume.send("netops", {
      title = action == "trigger" and ("AP %s is flapping"):format(ctx.key)
                                  or ("AP %s is steady again"):format(ctx.key),
      text = action == "trigger"
        and ("%d connects and disconnects within 10 minutes"):format(ctx.changes)
        or "No connect or disconnect for 30 minutes",
      severity = action == "trigger" and "warning" or "info",
      fields = { site = ev.site_id },
    })
  end,
}
