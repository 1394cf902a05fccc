-- flap: 3 changes within 5 minutes; over after 10 quiet minutes.
return require "brume.flap" {
  topics = "device-events",
  key = function(ev) return ev.ap end,
  count = 3,
  within = "5m",
  quiet = "10m",
  send = function(ev, action, ctx)
    brume.send("out", { action = action, key = ctx.key, changes = ctx.changes, last = ev.n })
  end,
}
