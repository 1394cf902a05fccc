"""Target adapters against what each vendor documents.

Runs `brume test` on tests/rules/cases/adapters (one target of each kind,
with fake secrets) and checks the STRUCTURE of every request: the fields the
vendor requires, their types, the documented length limits, URLs and
methods, and that no secret shows in the output. A second pass sends
oversized and minimal messages through the same targets: an adapter must
cut or shape any neutral message into a request the vendor accepts.

Sources of the limits (as of writing):
  Slack      docs.slack.dev/reference/block-kit/blocks/{header,section}-block
  Teams      learn.microsoft.com/connectors/teams (Workflows post: ~28 KB)
  Webex      developer.webex.com/docs/api/v1/messages/create-a-message
  Google Chat developers.google.com/chat/reference/rest/v1/spaces.messages/create
  Discord    discord.com/developers/docs/resources/message#embed-object-embed-limits
  Mattermost developers.mattermost.com/integrate/reference/message-attachments
  PagerDuty  developer.pagerduty.com/docs/events-api-v2/trigger-events
  Opsgenie   docs.opsgenie.com/docs/alert-api
  ServiceNow Table API (docs.servicenow.com), incident close codes
  Jira       developer.atlassian.com/cloud/jira/platform/rest/v3 (ADF), DC REST v2
  Zendesk    developer.zendesk.com/api-reference/ticketing/tickets/tickets
  Webhooks   standardwebhooks.com
"""
import base64
import json
import os
import shutil
import tempfile
import unittest
import urllib.parse

import harness
from harness import SRC, run_cli

CASE = os.path.join(SRC, "tests", "rules", "cases", "adapters")
CONFIG = os.path.join(CASE, "brume.lua")
PAYLOAD = os.path.join(harness.FIXTURES, "alarms--rogue-ap-const-alarm-defs.json")
EVENT_ID = "59be9221-1e26-4466-baa3-6afbce1b7bcb"
DEDUP = "rogue:" + EVENT_ID

# Every secret the case's config holds, and the forms they could leak in.
SECRETS = [
    "SLACK-SECRET-PATH-123", "TEAMS-SECRET-SIG-123", "WEBEX-SECRET-TOKEN-123",
    "GCHAT-SECRET-KEY-123", "GCHAT-SECRET-TOKEN-123", "DISCORD-SECRET-TOKEN-123",
    "MATTERMOST-SECRET-KEY-123", "PAGERDUTY-SECRET-ROUTING-KEY-123", "OPSGENIE-SECRET-KEY-123",
    "SERVICENOW-SECRET-PASSWORD-123", "JIRA-SECRET-TOKEN-123", "JIRA-DC-SECRET-TOKEN-123",
    "ZENDESK-SECRET-TOKEN-123", "whsec_V0VCSE9PSy1TRUNSRVQtMTIz", "V0VCSE9PSy1TRUNSRVQtMTIz",
    "WEBHOOK-SECRET-123", "WEBHOOK-SECRET-HEADER-123",
]
for _cred in ("brume:SERVICENOW-SECRET-PASSWORD-123", "brume@example.com:JIRA-SECRET-TOKEN-123",
              "brume@example.com/token:ZENDESK-SECRET-TOKEN-123"):
    SECRETS.append(base64.b64encode(_cred.encode()).decode())
SECRET_HEADER_WORDS = ("authorization", "token", "key", "secret", "signature", "password", "cookie")

KINDS = {"slack", "teams", "webex", "gchat", "discord", "mattermost", "pagerduty", "opsgenie",
         "servicenow", "jira", "jira_dc", "zendesk", "webhook", "file"}
TICKET_KINDS = {"servicenow", "jira", "jira_dc", "zendesk"}
RESOLVABLE = {"pagerduty", "opsgenie"} | TICKET_KINDS

ADAPTIVE = "application/vnd.microsoft.card.adaptive"
PD_SEVERITIES = {"critical", "error", "warning", "info"}
OPSGENIE_PRIORITIES = {"P1", "P2", "P3", "P4", "P5"}
# ServiceNow's out-of-box incident close codes (resolution codes) in current
# releases; "Solved (Permanently)" and friends are from releases before them.
SERVICENOW_CLOSE_CODES = {"Duplicate", "Known error", "No resolution provided", "Resolved by caller",
                          "Resolved by change", "Resolved by problem", "Resolved by request",
                          "Solution provided", "Workaround provided", "User error"}


def run_brume(config, payload=PAYLOAD):
    r = run_cli("test", "-c", config, payload, env={"MIST_WEBHOOK_SECRET": "adapters"})
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return r, lines


def run_with_rule(rule):
    """brume test on the case's targets with RULE as the only rule; returns
    (the case's folder, to remove, the process, its lines)."""
    folder = tempfile.mkdtemp(prefix="brume-adapters-")
    shutil.copy(CONFIG, os.path.join(folder, "brume.lua"))
    os.makedirs(os.path.join(folder, "rules"))
    with open(os.path.join(folder, "rules", "rule.lua"), "w") as f:
        f.write(rule)
    proc, lines = run_brume(os.path.join(folder, "brume.lua"))
    return folder, proc, lines


def body(req):
    """A request's body: brume test shows a JSON body as JSON, other bodies as text."""
    b = req["body"]
    return json.loads(b) if isinstance(b, str) else b


def body_size(req):
    """The bytes of a request's body as sent (a JSON body, as brume encodes it)."""
    b = req["body"]
    return len((b if isinstance(b, str) else
                json.dumps(b, separators=(",", ":"), ensure_ascii=False)).encode())


def query(url):
    return urllib.parse.parse_qs(urllib.parse.urlsplit(url).query, keep_blank_values=True)


def path(url):
    return urllib.parse.urlsplit(url).path


def is_resolve(line):
    return str(line["message"].get("action", "")).lower() in ("resolve", "resolved", "close")


def steps(req):
    """The concrete requests of a line: the request itself, or a plan's steps."""
    if "lookup" in req or "create" in req or "update" in req:
        return [req[k] for k in ("lookup", "create", "update") if k in req]
    return [req]


# ---- per-kind structural checks --------------------------------------------------
# Each takes the TestCase and one printed line; `full` says whether the
# message is the case's full message (title, text, 2 fields, link), so the
# checks may also say what must be there, not only what must not be exceeded.

def check_https_post(tc, req, ctype="application/json"):
    tc.assertEqual(req["method"], "POST")
    tc.assertTrue(req["url"].startswith("https://"), req["url"])
    tc.assertEqual(req["headers"].get("Content-Type"), ctype)


def check_slack(tc, line, full):
    req = line["request"]
    check_https_post(tc, req)
    b = body(req)
    tc.assertIsInstance(b.get("text"), str)
    tc.assertTrue(b["text"])
    blocks = b.get("blocks")
    tc.assertIsInstance(blocks, list)
    tc.assertTrue(0 < len(blocks) <= 50)
    head = blocks[0]
    tc.assertEqual(head["type"], "header")
    tc.assertEqual(head["text"]["type"], "plain_text")
    tc.assertTrue(0 < len(head["text"]["text"]) <= 150, len(head["text"]["text"]))
    for blk in blocks:
        tc.assertIn(blk["type"], ("header", "section", "context", "actions", "divider"))
        if blk["type"] == "section":
            tc.assertTrue("text" in blk or "fields" in blk)
            if "text" in blk:
                tc.assertIn(blk["text"]["type"], ("mrkdwn", "plain_text"))
                tc.assertTrue(0 < len(blk["text"]["text"]) <= 3000, len(blk["text"]["text"]))
            if "fields" in blk:
                tc.assertTrue(0 < len(blk["fields"]) <= 10, len(blk["fields"]))
                for f in blk["fields"]:
                    tc.assertIn(f["type"], ("mrkdwn", "plain_text"))
                    tc.assertTrue(0 < len(f["text"]) <= 2000, len(f["text"]))
        if blk["type"] == "context":
            tc.assertTrue(0 < len(blk["elements"]) <= 10)
        if blk["type"] == "actions":
            tc.assertTrue(0 < len(blk["elements"]) <= 25)
            for e in blk["elements"]:
                if e["type"] == "button":
                    tc.assertEqual(e["text"]["type"], "plain_text")
                    tc.assertTrue(0 < len(e["text"]["text"]) <= 75)
                    tc.assertLessEqual(len(e.get("url", "")), 3000)
    if full:
        tc.assertEqual(head["text"]["text"], "Rogue AP detected on AP_NAME")
        sections = [blk for blk in blocks if blk["type"] == "section" and "fields" in blk]
        tc.assertEqual(len(sections), 1)
        tc.assertEqual(len(sections[0]["fields"]), 2)
        buttons = [e for blk in blocks if blk["type"] == "actions" for e in blk["elements"]]
        tc.assertTrue(buttons[0]["url"].startswith("https://manage.mist.com/"))


def check_teams(tc, line, full):
    req = line["request"]
    check_https_post(tc, req)
    tc.assertLessEqual(body_size(req), 28 * 1024,
                       "Teams (Workflows) posts fail past about 28 KB")
    b = body(req)
    tc.assertEqual(b["type"], "message")
    tc.assertEqual(len(b["attachments"]), 1)
    att = b["attachments"][0]
    tc.assertEqual(att["contentType"], ADAPTIVE)
    card = att["content"]
    tc.assertEqual(card["type"], "AdaptiveCard")
    tc.assertRegex(card["version"], r"^1\.[0-5]$")
    tc.assertIsInstance(card["body"], list)
    tc.assertTrue(card["body"])
    for el in card["body"]:
        tc.assertIn(el["type"], ("TextBlock", "FactSet", "ColumnSet", "Container", "RichTextBlock"))
        if el["type"] == "TextBlock":
            tc.assertIsInstance(el["text"], str)
        if el["type"] == "FactSet":
            for f in el["facts"]:
                tc.assertIsInstance(f["title"], str)
                tc.assertIsInstance(f["value"], str)
    for a in card.get("actions", []):
        tc.assertEqual(a["type"], "Action.OpenUrl")
        tc.assertTrue(a["url"].startswith("https://"))
    if full:
        tc.assertEqual(card["actions"][0]["url"][:24], "https://manage.mist.com/")


def check_webex(tc, line, full):
    req = line["request"]
    check_https_post(tc, req)
    tc.assertEqual(req["url"], "https://webexapis.com/v1/messages")
    b = body(req)
    targets = [k for k in ("roomId", "toPersonId", "toPersonEmail") if k in b]
    tc.assertEqual(len(targets), 1, b.keys())
    tc.assertTrue(b.get("text") or b.get("markdown"))
    for k in ("text", "markdown"):
        if k in b:
            tc.assertIsInstance(b[k], str)
            tc.assertLessEqual(len(b[k].encode()), 7439)


def check_gchat(tc, line, full):
    req = line["request"]
    check_https_post(tc, req, "application/json; charset=UTF-8")
    tc.assertLessEqual(body_size(req), 32000)
    b = body(req)
    tc.assertIsInstance(b.get("text"), str)
    tc.assertTrue(b["text"])
    if full:
        tc.assertTrue(b["text"].startswith("*Rogue AP detected on AP_NAME*"))


def check_discord(tc, line, full):
    req = line["request"]
    check_https_post(tc, req)
    b = body(req)
    tc.assertTrue(b.get("content") or b.get("embeds"))
    tc.assertLessEqual(len(b.get("content", "")), 2000)
    embeds = b.get("embeds", [])
    tc.assertLessEqual(len(embeds), 10)
    total = 0
    for e in embeds:
        tc.assertLessEqual(len(e.get("title", "")), 256)
        tc.assertLessEqual(len(e.get("description", "")), 4096)
        tc.assertLessEqual(len(e.get("fields", [])), 25)
        if "color" in e:
            tc.assertIsInstance(e["color"], int)
            tc.assertTrue(0 <= e["color"] <= 0xFFFFFF)
        total += len(e.get("title", "")) + len(e.get("description", ""))
        for f in e.get("fields", []):
            tc.assertTrue(0 < len(f["name"]) <= 256)
            tc.assertTrue(0 < len(f["value"]) <= 1024)
            tc.assertIsInstance(f.get("inline", False), bool)
            total += len(f["name"]) + len(f["value"])
    tc.assertLessEqual(total, 6000, "Discord: title, description and fields of all embeds "
                                    "may hold 6000 characters in all")
    if full:
        tc.assertEqual(len(embeds[0]["fields"]), 2)
        tc.assertTrue(embeds[0]["url"].startswith("https://manage.mist.com/"))


def check_mattermost(tc, line, full):
    req = line["request"]
    check_https_post(tc, req)
    b = body(req)
    atts = b.get("attachments")
    tc.assertIsInstance(atts, list)
    tc.assertTrue(atts)
    for a in atts:
        tc.assertIsInstance(a.get("fallback"), str)  # required by Mattermost
        tc.assertTrue(a["fallback"])
        if "color" in a:
            tc.assertRegex(a["color"], r"^#[0-9A-Fa-f]{6}$")
        for f in a.get("fields", []):
            tc.assertIsInstance(f["title"], str)
            tc.assertIsInstance(f["short"], bool)
    if full:
        tc.assertEqual(atts[0]["title"], "Rogue AP detected on AP_NAME")
        tc.assertTrue(atts[0]["title_link"].startswith("https://manage.mist.com/"))


def check_pagerduty(tc, line, full):
    req = line["request"]
    check_https_post(tc, req)
    tc.assertEqual(req["url"], "https://events.pagerduty.com/v2/enqueue")
    b = body(req)
    tc.assertEqual(b["routing_key"], "****")  # present, and masked
    tc.assertTrue(0 < len(b["dedup_key"]) <= 255)
    if is_resolve(line):
        tc.assertEqual(b["event_action"], "resolve")
        tc.assertNotIn("payload", b)
        if full:
            tc.assertEqual(b["dedup_key"], DEDUP)
        return
    tc.assertEqual(b["event_action"], "trigger")
    p = b["payload"]
    tc.assertTrue(0 < len(p["summary"]) <= 1024)
    tc.assertIsInstance(p["source"], str)
    tc.assertTrue(p["source"])
    tc.assertIn(p["severity"], PD_SEVERITIES)
    if "custom_details" in p:
        tc.assertIsInstance(p["custom_details"], dict)
    for link in b.get("links", []):
        tc.assertTrue(link["href"].startswith("http"))
    if full:
        tc.assertEqual(b["dedup_key"], DEDUP)
        tc.assertEqual(p["severity"], "critical")
        tc.assertTrue(b["links"])


def check_opsgenie(tc, line, full):
    req = line["request"]
    check_https_post(tc, req)
    tc.assertEqual(req["headers"].get("Authorization"), "****")
    b = body(req)
    if is_resolve(line):
        u = urllib.parse.urlsplit(req["url"])
        tc.assertEqual(u.netloc, "api.opsgenie.com")
        parts = u.path.split("/")
        tc.assertEqual(parts[:3], ["", "v2", "alerts"])
        tc.assertEqual(parts[-1], "close")
        tc.assertEqual(len(parts), 5, u.path)
        tc.assertEqual(query(req["url"]).get("identifierType"), ["alias"])
        tc.assertNotIn("message", b)
        tc.assertLessEqual(len(b.get("note", "")), 25000)
        tc.assertLessEqual(len(b.get("source", "")), 100)
        if full:
            tc.assertEqual(urllib.parse.unquote(parts[3]), DEDUP)
        return
    tc.assertEqual(path(req["url"]), "/v2/alerts")
    tc.assertTrue(0 < len(b["message"]) <= 130, len(b["message"]))
    tc.assertTrue(0 < len(b["alias"]) <= 512)
    tc.assertIn(b["priority"], OPSGENIE_PRIORITIES)
    tc.assertLessEqual(len(b.get("description", "")), 15000)
    tc.assertLessEqual(len(b.get("source", "")), 100)
    tags = b.get("tags", [])
    tc.assertLessEqual(len(tags), 20)
    for t in tags:
        tc.assertLessEqual(len(t), 50)
    details = b.get("details", {})
    tc.assertIsInstance(details, dict)
    for k, v in details.items():
        tc.assertIsInstance(v, str)
    tc.assertLessEqual(sum(len(k) + len(v) for k, v in details.items()), 8000,
                       "Opsgenie: details may hold 8000 characters in all")
    for r in b.get("responders", []):
        tc.assertIn(r["type"], ("team", "user", "escalation", "schedule"))
        tc.assertTrue(r.get("id") or r.get("name") or r.get("username"))
    if full:
        tc.assertEqual(b["alias"], DEDUP)
        tc.assertEqual(b["priority"], "P1")
        tc.assertEqual(b["message"], "Rogue AP detected on AP_NAME")


def check_plan_auth(tc, req):
    for s in steps(req):
        tc.assertEqual(s["headers"].get("Authorization"), "****")
        tc.assertEqual(s["headers"].get("Accept"), "application/json")


def check_servicenow(tc, line, full):
    req = line["request"]
    check_plan_auth(tc, req)
    base = "https://example.service-now.com/api/now/table/incident"
    key = req["ticket"]
    tc.assertTrue(0 < len(key) <= 100)
    look = req["lookup"]
    tc.assertEqual(look["method"], "GET")
    tc.assertTrue(look["url"].startswith(base + "?"), look["url"])
    # Open incidents only, so that a resolved one is not updated again.
    tc.assertEqual(query(look["url"])["sysparm_query"],
                   ["correlation_id=" + key + "^active=true^state!=6"])
    tc.assertNotIn("^", key)  # the encoded query's separator
    tc.assertEqual(look["ref"], "result.0.sys_id")
    upd = req["update"]
    tc.assertEqual(upd["method"], "PATCH")
    tc.assertEqual(upd["url"], base + "/{ref}")
    ub = body(upd)
    if is_resolve(line):
        tc.assertNotIn("create", req)
        tc.assertIsInstance(ub["state"], str)
        tc.assertTrue(ub["state"].isdigit())
        tc.assertTrue(ub["close_code"])
        tc.assertTrue(ub["close_notes"])
        tc.assertIs(req.get("closes"), True)
        if full:
            tc.assertEqual(ub["state"], "6")  # Resolved
        return
    cr = req["create"]
    tc.assertEqual(cr["method"], "POST")
    tc.assertEqual(cr["url"], base)
    tc.assertEqual(cr["ref"], "result.sys_id")
    cb = body(cr)
    tc.assertTrue(0 < len(cb["short_description"]) <= 160)
    tc.assertEqual(cb["correlation_id"], key)
    tc.assertIn(cb["urgency"], ("1", "2", "3"))
    tc.assertIn(cb["impact"], ("1", "2", "3"))
    tc.assertTrue(ub["work_notes"])
    if full:
        tc.assertEqual(key, DEDUP)
        tc.assertEqual((cb["urgency"], cb["impact"]), ("1", "1"))


def check_adf(tc, doc):
    """An Atlassian Document Format document: type doc, version 1, a
    non-empty content array of block nodes, no empty text nodes."""
    tc.assertIsInstance(doc, dict)
    tc.assertEqual(doc.get("type"), "doc")
    tc.assertEqual(doc.get("version"), 1)
    tc.assertIsInstance(doc.get("content"), list, "ADF content must be an array")
    tc.assertTrue(doc["content"])

    def walk(node):
        tc.assertIsInstance(node, dict)
        tc.assertIsInstance(node.get("type"), str)
        if node["type"] == "text":
            tc.assertIsInstance(node.get("text"), str)
            tc.assertTrue(node["text"], "ADF text nodes may not be empty")
            return
        if "content" in node:
            tc.assertIsInstance(node["content"], list, "ADF %s content must be an array"
                                % node["type"])
            for child in node["content"]:
                walk(child)

    for block in doc["content"]:
        tc.assertIn(block["type"], ("paragraph", "heading", "bulletList", "orderedList",
                                    "codeBlock", "blockquote", "panel", "rule", "table"))
        walk(block)


def check_jira(tc, line, full, cloud=True):
    req = line["request"]
    check_plan_auth(tc, req)
    host = "https://example.atlassian.net" if cloud else "https://jira.example.com"
    api = host + ("/rest/api/3" if cloud else "/rest/api/2")
    look = req["lookup"]
    tc.assertEqual(look["method"], "GET")
    tc.assertEqual(look["url"].split("?")[0], api + ("/search/jql" if cloud else "/search"))
    q = query(look["url"])
    tc.assertIn('project = "OPS"', q["jql"][0])
    tc.assertIn("labels = ", q["jql"][0])
    tc.assertIn("statusCategory != Done", q["jql"][0])  # open issues only
    tc.assertEqual(look["ref"], "issues.0.key")
    upd = req["update"]
    tc.assertEqual(upd["method"], "POST")
    ub = body(upd)
    if is_resolve(line):
        tc.assertNotIn("create", req)
        tc.assertIs(req.get("closes"), True)
        if cloud:  # this target has resolve_transition = "31"
            tc.assertEqual(upd["url"], api + "/issue/{ref}/transitions")
            tc.assertEqual(ub["transition"], {"id": "31"})
            comments = ub["update"]["comment"]
            tc.assertEqual(len(comments), 1)
            check_adf(tc, comments[0]["add"]["body"])
        else:
            tc.assertEqual(upd["url"], api + "/issue/{ref}/comment")
            tc.assertIsInstance(ub["body"], str)
            tc.assertTrue(ub["body"])
        return
    cr = req["create"]
    tc.assertEqual(cr["method"], "POST")
    tc.assertEqual(cr["url"], api + "/issue")
    tc.assertEqual(cr["ref"], "key")
    f = body(cr)["fields"]
    tc.assertEqual(f["project"], {"key": "OPS"})
    tc.assertIsInstance(f["issuetype"]["name"], str)
    tc.assertTrue(0 < len(f["summary"]) <= 255)
    tc.assertNotIn("\n", f["summary"])
    for label in f.get("labels", []):
        tc.assertNotIn(" ", label)
        tc.assertLessEqual(len(label), 255)
    tc.assertEqual(upd["url"], api + "/issue/{ref}/comment")
    if cloud:
        check_adf(tc, f["description"])
        check_adf(tc, ub["body"])
    else:
        tc.assertIsInstance(f["description"], str)
        tc.assertIsInstance(ub["body"], str)
        tc.assertTrue(ub["body"])
    if full:
        tc.assertEqual(f["summary"], "Rogue AP detected on AP_NAME")


def check_zendesk(tc, line, full):
    req = line["request"]
    check_plan_auth(tc, req)
    api = "https://example.zendesk.com/api/v2"
    key = req["ticket"]
    look = req["lookup"]
    tc.assertEqual(look["method"], "GET")
    tc.assertEqual(look["url"].split("?")[0], api + "/tickets.json")
    tc.assertEqual(query(look["url"])["external_id"], [key])
    tc.assertEqual(look["ref"], "tickets.?status!=solved|closed.id")  # open tickets only
    upd = req["update"]
    tc.assertEqual(upd["method"], "PUT")
    tc.assertEqual(upd["url"], api + "/tickets/{ref}.json")
    ut = body(upd)["ticket"]
    tc.assertTrue(ut["comment"]["body"])
    tc.assertIs(ut["comment"].get("public"), False)
    if is_resolve(line):
        tc.assertNotIn("create", req)
        tc.assertEqual(ut["status"], "solved")
        tc.assertIs(req.get("closes"), True)
        return
    tc.assertNotIn("status", ut)
    cr = req["create"]
    tc.assertEqual(cr["method"], "POST")
    tc.assertEqual(cr["url"], api + "/tickets.json")
    tc.assertEqual(cr["ref"], "ticket.id")
    t = body(cr)["ticket"]
    tc.assertIn("external_id", t)
    tc.assertEqual(t["external_id"], key)
    tc.assertTrue(t["subject"])
    tc.assertTrue(t["comment"]["body"])
    tc.assertIn(t["priority"], ("urgent", "high", "normal", "low"))
    if full:
        tc.assertEqual(key, DEDUP)
        tc.assertEqual(t["priority"], "urgent")


def check_webhook(tc, line, full):
    req = line["request"]
    check_https_post(tc, req)
    tc.assertEqual(req["url"], "https://hooks.example.com/****")  # URLs often carry tokens
    tc.assertEqual(req.get("sign"), "standard-webhooks")  # the target has a secret
    tc.assertEqual(req["headers"].get("X-Api-Key"), "****")
    # The headers each attempt adds are shown: the id is the delivery's key.
    tc.assertRegex(req["headers"]["webhook-id"], r"^\d+:\d+:[A-Za-z0-9._%-]+:\d+$")
    tc.assertEqual(req["headers"]["webhook-signature"], "****")
    b = body(req)
    if "raw" in line["message"]:
        tc.assertEqual(b, line["message"]["raw"])
    else:
        tc.assertEqual(b, line["message"])


def check_file(tc, line, full):
    req = line["request"]
    tc.assertEqual(req["method"], "APPEND")
    tc.assertEqual(req["url"], "file:/dev/null")
    b = body(req)
    for k in ("rule", "target", "topic", "event", "message"):
        tc.assertIn(k, b)
    tc.assertEqual(b["message"], line["message"])


CHECKS = {
    "slack": check_slack, "teams": check_teams, "webex": check_webex, "gchat": check_gchat,
    "discord": check_discord, "mattermost": check_mattermost, "pagerduty": check_pagerduty,
    "opsgenie": check_opsgenie, "servicenow": check_servicenow,
    "jira": lambda tc, line, full: check_jira(tc, line, full, cloud=True),
    "jira_dc": lambda tc, line, full: check_jira(tc, line, full, cloud=False),
    "zendesk": check_zendesk, "webhook": check_webhook, "file": check_file,
}


def check_masked(tc, proc, lines):
    """No secret anywhere in what brume test prints; credential headers are ****."""
    for secret in SECRETS:
        tc.assertNotIn(secret, proc.stdout, "secret printed: " + secret)
        tc.assertNotIn(secret, proc.stderr, "secret logged: " + secret)
    for line in lines:
        for s in steps(line["request"]):
            for name, value in (s.get("headers") or {}).items():
                if any(w in name.lower() for w in SECRET_HEADER_WORDS):
                    tc.assertEqual(value, "****", "%s: header %s" % (line["target"], name))
            tc.assertNotIn("@", urllib.parse.urlsplit(s["url"]).netloc.replace("****@", ""))


class Adapters(unittest.TestCase):
    """The adapters case: one full message per target, a resolve per kind
    that has one, and a raw body to the webhook."""

    @classmethod
    def setUpClass(cls):
        cls.proc, cls.lines = run_brume(CONFIG)

    def of(self, target, resolve=None):
        got = [line for line in self.lines if line["target"] == target and
               (resolve is None or is_resolve(line) == resolve)]
        self.assertTrue(got, "no line for " + target)
        return got

    def test_runs_and_covers_every_kind(self):
        self.assertEqual(self.proc.returncode, 0, self.proc.stderr)
        self.assertEqual({line["target"] for line in self.lines}, KINDS)
        for line in self.lines:
            self.assertEqual(line["rule"], "all")
            self.assertEqual(line["topic"], "alarms")
            self.assertEqual(line["event"], EVENT_ID)
        for kind in KINDS:
            want = 2 if kind in RESOLVABLE or kind == "webhook" else 1
            self.assertEqual(len(self.of(kind)), want, kind)
        for kind in RESOLVABLE:
            self.assertEqual(len(self.of(kind, resolve=True)), 1, kind)

    def test_secrets_are_masked(self):
        check_masked(self, self.proc, self.lines)
        # A URL that is itself the secret shows as its host and ****.
        for kind, host in (("slack", "https://hooks.example.com"), ("teams", "https://teams.example.com"),
                           ("gchat", "https://chat.example.com"),
                           ("discord", "https://discord.example.com"),
                           ("mattermost", "https://mattermost.example.com")):
            self.assertEqual(self.of(kind)[0]["request"]["url"], host + "/****")

    def test_ticket_plans_shape(self):
        for kind in TICKET_KINDS:
            for line in self.of(kind):
                req = line["request"]
                self.assertEqual(req["ticket"], DEDUP, kind)
                self.assertIn("lookup", req)
                self.assertIn("{ref}", req["update"]["url"])
                self.assertEqual("create" in req, not is_resolve(line), kind)

    def test_servicenow_default_close_code_is_current(self):
        """The resolve plan's default close_code should be one of ServiceNow's
        current out-of-box incident close codes."""
        ub = body(self.of("servicenow", resolve=True)[0]["request"]["update"])
        self.assertIn(ub["close_code"], SERVICENOW_CLOSE_CODES)


def _kind_test(kind):
    def test(self):
        for line in self.of(kind):
            with self.subTest(action=line["message"].get("action", "trigger"),
                              raw="raw" in line["message"]):
                CHECKS[kind](self, line, full="raw" not in line["message"])
    return test


for _kind in sorted(KINDS):
    setattr(Adapters, "test_" + _kind, _kind_test(_kind))


# A rule that sends oversized and minimal messages to every target of the case.
STRESS_RULE = r'''
local targets = { "slack", "teams", "webex", "gchat", "discord", "mattermost", "pagerduty",
                  "opsgenie", "servicenow", "jira", "jira_dc", "zendesk", "webhook", "file" }
local resolvable = { pagerduty = true, opsgenie = true, servicenow = true, jira = true,
                     jira_dc = true, zendesk = true }

local function big()
  local fields = {}
  for i = 1, 30 do fields[("field%02d"):format(i)] = ("v"):rep(1000) end
  return {
    title = ("é"):rep(200) .. "\nsecond line",
    text = ("x"):rep(5000) .. ("ü"):rep(100),
    severity = "critical",
    fields = fields,
    link = "https://manage.mist.com/admin/?org_id=1#!alerts",
    dedup_key = ("k"):rep(300),
  }
end

return {
  topics = "alarms",
  on_event = function(ev)
    for _, name in ipairs(targets) do
      brume.send(name, big())
      brume.send(name, { title = "only a title", dedup_key = "bare" })
      brume.send(name, { text = "a text\nwithout a title", severity = "warn", dedup_key = "text" })
      if resolvable[name] then
        local m = big()
        m.action = "resolve"
        brume.send(name, m)
      end
    end
  end,
}
'''


class Stress(unittest.TestCase):
    """The same targets, with messages past every vendor limit and with
    bare ones: each adapter must still produce a request the vendor takes."""

    @classmethod
    def setUpClass(cls):
        cls.dir, cls.proc, cls.lines = run_with_rule(STRESS_RULE)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_runs(self):
        self.assertEqual(self.proc.returncode, 0, self.proc.stderr)
        want = sum(4 if k in RESOLVABLE else 3 for k in KINDS)
        self.assertEqual(len(self.lines), want)
        check_masked(self, self.proc, self.lines)


def _stress_test(kind):
    def test(self):
        got = [line for line in self.lines if line["target"] == kind]
        self.assertTrue(got)
        for line in got:
            with self.subTest(dedup_key=line["message"].get("dedup_key", "")[:10],
                              action=line["message"].get("action", "trigger")):
                CHECKS[kind](self, line, full=False)
    return test


for _kind in sorted(KINDS):
    setattr(Stress, "test_" + _kind, _stress_test(_kind))


# Text from an event is anyone's to choose (an SSID, a device name): it must
# not turn into markup that pings a channel, hides a link, or widens a query.
HOSTILE_RULE = r'''
return {
  topics = "alarms",
  on_event = function(ev)
    local m = { title = "SSID <!channel>", text = "<!here> & <https://evil.example|click me>",
                fields = { ssid = "<@all> <users/all>" }, dedup_key = "k^ORactive=false" }
    for _, name in ipairs({ "slack", "gchat", "webex", "servicenow" }) do brume.send(name, m) end
  end,
}
'''


class Hostile(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir, cls.proc, lines = run_with_rule(HOSTILE_RULE)
        cls.by = {line["target"]: line["request"] for line in lines}

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_slack_escapes_mrkdwn(self):
        b = body(self.by["slack"])
        texts = [b["text"]] + [blk["text"]["text"] for blk in b["blocks"]
                               if blk["type"] == "section" and "text" in blk]
        texts += [f["text"] for blk in b["blocks"] for f in blk.get("fields", [])]
        for t in texts:
            self.assertNotIn("<", t)
            self.assertNotIn(">", t)
        self.assertIn("&lt;!here&gt; &amp; &lt;https://evil.example|click me&gt;", texts[1])
        # The header is plain text: Slack shows it as it is.
        self.assertEqual(b["blocks"][0]["text"]["text"], "SSID <!channel>")

    def test_chat_mentions_are_defused(self):
        joiner = "\u2060"
        text = body(self.by["gchat"])["text"]
        self.assertNotIn("<users/all>", text)
        self.assertIn("<" + joiner + "users/all>", text)
        md = body(self.by["webex"])["markdown"]
        self.assertNotIn("<@all>", md)
        self.assertIn("<" + joiner + "@all>", md)

    def test_servicenow_key_cannot_extend_the_query(self):
        plan = self.by["servicenow"]
        self.assertEqual(plan["ticket"], "k_ORactive=false")
        self.assertEqual(query(plan["lookup"]["url"])["sysparm_query"],
                         ["correlation_id=k_ORactive=false^active=true^state!=6"])


if __name__ == "__main__":
    unittest.main()
