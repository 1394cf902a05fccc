-- Configuration changes (audits) to a Teams channel, with what changed.
--
-- Every change an administrator makes in Mist is an `audits` event; Mist
-- sends the settings before and after as JSON inside strings.
-- mist.audit_diff turns them into a list of changed paths, so the card
-- shows "radio_config.band_24.power: null -> 10" rather than two blobs.
-- Audits without a before/after (a login, say) list no changes.
local mist = require "brume.mist"

local function show(v)
  if v == nil then return "(none)" end
  if type(v) == "table" then return brume.json.encode(v) end
  return tostring(v)
end

return {
  topics = "audits",
  on_event = function(ev, ctx)
    local changes, lines = mist.audit_diff(ev), {}
    for i, c in ipairs(changes) do
      if i > 20 then
        lines[#lines + 1] = ("... and %d more"):format(#changes - 20)
        break
      end
      lines[#lines + 1] = ("%s: %s -> %s"):format(c.path, show(c.before), show(c.after))
    end
    brume.send("netops", {
      title = ("%s: %s"):format(mist.site(ev) or "org", ev.message or "configuration change"),
      text = #lines > 0 and table.concat(lines, "\n") or "No settings changed.",
      severity = "info",
      fields = {
        { "by", ev.admin_name },
        { "from", ev.src_ip },
        { "at", mist.time(ev.timestamp) },
      },
    })
  end,
}
