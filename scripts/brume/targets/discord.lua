-- Discord webhook: one embed (title, description, colour by severity,
-- fields, link).
local t = require "brume.target"

local M = {
  max_age = "1h",
  options = {
    url = { "url", required = true, secret = true },
    username = "string",
  },
}

local colors = { critical = 0xD0021B, error = 0xF5A623, warning = 0xF8E71C, info = 0x4A90E2 }

-- Discord takes 6000 characters in an embed's title, description and
-- fields together (and refuses the message past that).
local BUDGET = 6000

function M.request(target, msg)
  if msg.raw then return t.post(target.url, t.raw(msg)) end
  local title = t.cut(t.title(msg), 256)
  local description = t.text(msg) ~= "" and t.cut(t.text(msg), math.min(4096, BUDGET - #title - 1000)) or nil
  local used = #title + #(description or "")
  local fields = {}
  for i, f in ipairs(t.fields(msg)) do
    local name, value = t.cut(f[1], 256), t.cut(f[2], 1024)
    if i > 25 or used + #name + #value > BUDGET then break end
    used = used + #name + #value
    fields[#fields + 1] = { name = name, value = value, inline = true }
  end
  local embed = {
    title = title,
    description = description,
    color = colors[t.severity(msg)],
    url = msg.link and tostring(msg.link) or nil,
  }
  if #fields > 0 then embed.fields = fields end
  -- Mentions in an embed notify no one: event text cannot ping.
  return t.post(target.url, { username = target.username, embeds = { embed } })
end

return M
