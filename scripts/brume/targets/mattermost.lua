-- Mattermost incoming webhook: a message attachment (colour by severity,
-- title, text, short fields).
local t = require "brume.target"

local M = {
  max_age = "1h",
  options = {
    url = { "url", required = true, secret = true },
    channel = "string",
    username = "string",
  },
}

local colors = { critical = "#D0021B", error = "#F5A623", warning = "#F8E71C", info = "#4A90E2" }

function M.request(target, msg)
  if msg.raw then return t.post(target.url, t.raw(msg)) end
  local fields = {}
  for _, f in ipairs(t.fields(msg)) do fields[#fields + 1] = { title = f[1], value = f[2], short = true } end
  local attachment = {
    fallback = t.cut(t.plain(msg), 3000),
    color = colors[t.severity(msg)],
    title = t.title(msg),
    title_link = msg.link and tostring(msg.link) or nil,
    text = t.text(msg) ~= "" and t.text(msg) or nil,
  }
  if #fields > 0 then attachment.fields = fields end
  return t.post(target.url, {
    channel = target.channel,
    username = target.username,
    attachments = { attachment },
  })
end

return M
