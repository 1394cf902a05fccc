-- The same condition with a shorter wait: its state must not be hold_plain's.
return require "brume.holddown" {
  topics = "device-updowns",
  key = function(ev) return ev.ap end,
  down = function(ev) return ev.type == "down" end,
  up = function(ev) return ev.type == "up" end,
  after = "1m",
  send = function(ev, action, ctx) brume.send("out", { action = action, key = ctx.key }) end,
}
