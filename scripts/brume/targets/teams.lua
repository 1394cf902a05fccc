-- Microsoft Teams through a Workflows webhook ("When a Teams webhook request
-- is received"): an Adaptive Card in a message attachment. The old Office
-- 365 connector URLs are retired. Workflows answer 202 as soon as they take
-- the request, even when the card later fails to post: check the flow's run
-- history when a card does not show.
local t = require "brume.target"

local M = {
  max_age = "1h",
  options = { url = { "url", required = true, secret = true } },
}

local colors = { critical = "Attention", error = "Attention", warning = "Warning", info = "Default" }

-- A Workflows post fails past about 28 KB: the card stays well under it.
function M.request(target, msg)
  if msg.raw then return t.post(target.url, t.raw(msg)) end
  local body = {
    { type = "TextBlock", text = t.cut(t.title(msg), 500), weight = "Bolder", size = "Medium",
      wrap = true, color = colors[t.severity(msg)] },
  }
  if t.text(msg) ~= "" then
    body[#body + 1] = { type = "TextBlock", text = t.cut(t.text(msg), 12000), wrap = true }
  end
  local facts = {}
  for i, f in ipairs(t.fields(msg)) do
    if i > 30 then break end
    facts[#facts + 1] = { title = t.cut(f[1], 100), value = t.cut(f[2], 300) }
  end
  if #facts > 0 then body[#body + 1] = { type = "FactSet", facts = facts } end
  body[#body + 1] = { type = "TextBlock", text = "Severity: " .. t.severity(msg), isSubtle = true,
                      size = "Small", wrap = true }
  local card = {
    ["$schema"] = "http://adaptivecards.io/schemas/adaptive-card.json",
    type = "AdaptiveCard",
    version = "1.4",
    body = body,
  }
  if msg.link then
    card.actions = { { type = "Action.OpenUrl", title = "Open", url = tostring(msg.link) } }
  end
  return t.post(target.url, {
    type = "message",
    attachments = { {
      contentType = "application/vnd.microsoft.card.adaptive",
      contentUrl = brume.null,
      content = card,
    } },
  })
end

return M
