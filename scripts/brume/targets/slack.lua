-- Slack incoming webhook: Block Kit (header, text, fields, severity,
-- link button) with a plain-text fallback. Slack takes about one message a
-- second per webhook and answers 429 with Retry-After past it: rate = "1/s".
local t = require "brume.target"

local M = {
  max_age = "1h",
  options = {
    url = { "url", required = true, secret = true }, -- the webhook URL is the credential
    -- Legacy webhooks only; a Slack app's webhook posts to its own channel as itself.
    channel = "string",
    username = "string",
    icon_emoji = "string",
  },
}

local dots = { critical = ":red_circle:", error = ":large_orange_circle:",
               warning = ":large_yellow_circle:", info = ":large_blue_circle:" }

-- Slack reads &, < and > as markup in mrkdwn ("<!channel>", "<url|text>"):
-- escaped, so that text from an event cannot ping a channel or hide a link.
local entities = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;" }
local function esc(s) return (tostring(s):gsub("[&<>]", entities)) end

function M.request(target, msg)
  if msg.raw then return t.post(target.url, t.raw(msg)) end
  local severity = t.severity(msg)
  local blocks = {
    { type = "header", text = { type = "plain_text", text = t.cut(t.title(msg), 150), emoji = true } },
  }
  if t.text(msg) ~= "" then
    blocks[#blocks + 1] = { type = "section", text = { type = "mrkdwn", text = t.cut(esc(t.text(msg)), 3000) } }
  end
  local fields = {}
  for i, f in ipairs(t.fields(msg)) do
    if i > 10 then break end -- Slack's limit per section
    fields[#fields + 1] = { type = "mrkdwn", text = t.cut("*" .. esc(f[1]) .. "*\n" .. esc(f[2]), 2000) }
  end
  if #fields > 0 then blocks[#blocks + 1] = { type = "section", fields = fields } end
  blocks[#blocks + 1] = { type = "context", elements = {
    { type = "mrkdwn", text = dots[severity] .. " " .. severity },
  } }
  if msg.link then
    blocks[#blocks + 1] = { type = "actions", elements = {
      { type = "button", text = { type = "plain_text", text = "Open" }, url = tostring(msg.link) },
    } }
  end
  return t.post(target.url, {
    text = t.cut(esc(t.plain(msg)), 3000), -- notifications and clients without blocks
    blocks = blocks,
    channel = target.channel,
    username = target.username,
    icon_emoji = target.icon_emoji,
  })
end

return M
