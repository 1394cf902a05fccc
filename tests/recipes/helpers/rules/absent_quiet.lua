-- absence without the resolve.
return require "brume.absence" {
  topics = "ping",
  key = function(ev) return ev.site end,
  within = "10m",
  resolve = false,
  send = function(ev, action, ctx)
    brume.send("out", { action = action, key = ctx.key, since = ctx.since, last = ev.n })
  end,
}
