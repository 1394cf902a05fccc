return { topics = "alarms", on_event = function(ev) while true do end end }
