return {
  topics = "alarms",
  on_event = function(ev) brume.send("out", { id = ev.id, after_failures = true }) end,
}
