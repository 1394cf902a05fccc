-- digest with debounce and a maximum wait, one digest for all, sent by hand.
return require "brume.digest" {
  topics = "audits",
  window = "5m",
  debounce = true,
  max_wait = "12m",
  max_items = 2,
  item = function(ev) if not ev.skip then return ev.n end end,
  title = function(key, items, ctx) return ("%d changes"):format(ctx.count) end,
  line = function(n) return "change " .. n end,
  send = function(key, items, ctx, message)
    message.key, message.at, message.opened_at = key, brume.now(), ctx.opened_at
    brume.send("out", message)
  end,
}
