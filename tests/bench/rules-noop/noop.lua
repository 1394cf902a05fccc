-- The benchmark's baseline rule: matched on every alarm, does nothing.
return { topics = "alarms", on_event = function(ev, ctx) end }
