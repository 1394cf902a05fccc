-- holddown without `stable` or `up`: anything but "down" is up.
return require "brume.holddown" {
  topics = "device-updowns",
  key = function(ev) return ev.ap end,
  down = function(ev) return ev.type == "down" end,
  after = "5m",
  send = function(ev, action, ctx)
    brume.send("out", { action = action, key = ctx.key, since = ctx.since, at = brume.now(),
                        seen = ev.n })
  end,
}
