/*
 * main: the brume command line. Parses arguments, loads the config and
 * hands over to the server (run) or does a one-shot job: check the config
 * and rules, run payload files through the rules (test), sign a body.
 * Exit codes: 0 success, 1 a user error (bad config, bad rule, bad payload),
 * 2 a usage error. Depends on config, engine, intake, cases, server,
 * backfill, verify.
 */
#include <errno.h>
#include <limits.h>
#include <event2/event.h>
#include <lua.h>
#include <math.h>
#include <openssl/opensslv.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "backfill.h"
#include "cases.h"
#include "config.h"
#include "engine.h"
#include "intake.h"
#include "log.h"
#include "outbox.h"
#include "server.h"
#include "journal.h"
#include "state.h"
#include "store.h"
#include "verify.h"

#define EXIT_USER   1
#define EXIT_USAGE  2
#define MAX_PAYLOAD (64u << 20)
#define MAX_TOPICS  32 /* named when a --topic matches none */

static const char usage_main[] =
    "usage: brume <command> [options]\n"
    "\n"
    "  run     [-c brume.lua]             start the daemon (logs to stderr)\n"
    "  check   [-c brume.lua]             load the config and rules, report every error\n"
    "  test    [-c brume.lua] [--at T] PAYLOAD...  run payload files through the rules\n"
    "                                     offline and print the messages they would send\n"
    "  test    [-c brume.lua] CASES.lua   run a clock test: timed steps and the messages\n"
    "                                     expected at each; a diff and exit 1 on a mismatch\n"
    "  sign    --secret S [FILE]          print the X-Mist-Signature-v2 value of a body\n"
    "  replay  [-c brume.lua] [--since T] [--until T] [--topic X] [--send]\n"
    "                                     re-run journaled bodies through the current rules\n"
    "  outbox  [-c brume.lua] [list|retry ID|drop ID]   inspect and steer deliveries\n"
    "  backfill [-c brume.lua] [--source NAME] [--since T] [--until T] [--topic X] [--dry-run]\n"
    "                                     take in what Mist failed to deliver (its delivery log)\n"
    "  version                            print the version\n"
    "\n"
    "Each command takes --help. Exit codes: 0 success, 1 bad config, rule or payload,\n"
    "2 usage.\n";

static const char usage_run[] =
    "usage: brume run [-c brume.lua]\n"
    "\n"
    "Starts the daemon on the config (default ./brume.lua): listens for Mist's\n"
    "webhooks, runs the rules, delivers what they send. Logs go to stderr.\n"
    "SIGHUP (or POST /reload on the admin listener, or a change to the config,\n"
    "a rule or a script) reloads the config and rules, all or nothing; SIGTERM\n"
    "or SIGINT stop after the requests in flight.\n";

static const char usage_check[] =
    "usage: brume check [-c brume.lua]\n"
    "\n"
    "Loads the config and every rule as `brume run` would and reports every\n"
    "problem found, as file:line: message. Exits 1 when there is any. Also\n"
    "warns, without failing, of a brume.send to a target name the config lacks.\n";

static const char usage_test[] =
    "usage: brume test [-c brume.lua] [--at T] PAYLOAD|CASES.lua...\n"
    "\n"
    "Runs each payload file (a whole webhook body, or - for stdin) through the\n"
    "rules, offline: nothing is written and nothing is sent. Prints one JSON\n"
    "line per message a rule sends:\n"
    "  {\"rule\":..., \"target\":..., \"topic\":..., \"event\":..., \"message\":{...}}\n"
    "--at T runs them as if it were T (\"2026-11-21T10:00Z\", seconds since the\n"
    "epoch, or \"24h\" ago): brume.now(), timers, once and dedupe read it.\n"
    "A file ending in .lua is a clock test: timed steps (payloads, time passing)\n"
    "and the messages expected at each, run on a simulated clock that fires\n"
    "timers and digests as it passes them (see the README). It prints ok, or a\n"
    "diff per failing step. Rule logs and errors go to stderr, naming the payload\n"
    "file. Exits 1 when a payload is not a Mist body, a rule fails or a clock\n"
    "test does not pass. Secrets (env() in a source's secret, the admin token,\n"
    "targets' options) need not be set: only a message to a target whose\n"
    "variable is missing fails.\n";

static const char usage_sign[] =
    "usage: brume sign --secret S [--sha1] [FILE]\n"
    "       brume sign -c brume.lua [--source NAME] [--sha1] [FILE]\n"
    "\n"
    "Prints the X-Mist-Signature-v2 header value of FILE's bytes (stdin without\n"
    "FILE): the lowercase hex HMAC-SHA256 under the secret, given directly or\n"
    "taken from a source of the config. --sha1 gives the legacy\n"
    "X-Mist-Signature (HMAC-SHA1) instead.\n";

static const char usage_outbox[] =
    "usage: brume outbox [-c brume.lua] [list [--all] | retry ID | drop ID]\n"
    "\n"
    "list (the default) shows pending and dead deliveries, newest first: id,\n"
    "state, target, attempts, the last attempt's status (its HTTP status, or\n"
    "refused, timeout, dns, tls when it got none), how long ago it was created\n"
    "and last tried, when the next attempt is due, the rule and the event that\n"
    "sent it (BODY:POSITION, BODY being the id `brume replay` prints, and the\n"
    "event's own id when it has one), and the last error (secrets masked; cut\n"
    "at the terminal's edge, whole when piped); --all adds the done ones.\n"
    "retry ID makes a dead (or pending) delivery due now, with a fresh max_age;\n"
    "drop ID deletes it. Works while brume runs.\n";

static const char usage_replay[] =
    "usage: brume replay [-c brume.lua] [--since T] [--until T] [--topic X] [--send]\n"
    "\n"
    "Runs the bodies kept in the journal (received in [since, until)) through\n"
    "the current rules, oldest first. By default a dry run, like `brume test`:\n"
    "it prints the messages the rules would send, one JSON line each with its\n"
    "body's \"delivery\" id, and sends nothing. --send queues them in the\n"
    "outbox (a running brume delivers them; otherwise the next start does);\n"
    "messages the original run already queued have the same keys and are not\n"
    "queued twice. T is a time ago (\"2h\", \"30m\", \"7d\"), an ISO 8601 date or\n"
    "time, in UTC unless it ends in an offset (\"2026-11-21\", \"2026-11-21T10:00\",\n"
    "\"2026-11-21T10:00+02:00\"), or seconds since the epoch. A --topic that\n"
    "matches no body kept says so, with the topics there are (exit 1). Rule\n"
    "state (brume.once and the like) starts empty.\n";

static const char usage_backfill[] =
    "usage: brume backfill [-c brume.lua] [--source NAME] [--since T] [--until T] [--topic X]\n"
    "                      [--dry-run]\n"
    "\n"
    "Reads the deliveries Mist failed to make to each source that names Mist's API\n"
    "(sources.NAME.mist), in [since, until) (default: the last hour), from the\n"
    "delivery log Mist keeps per webhook, and takes each body in as a post: journal,\n"
    "dedupe, rules, outbox. A body the journal holds already (its exact bytes) is\n"
    "skipped; so are events the source's dedupe has seen. Prints a line per body and\n"
    "per source: found, taken, skipped, failed. While brume runs, the running brume\n"
    "does it (through the admin listener); otherwise this command does, and what the\n"
    "rules send is queued for brume's next start. --dry-run reads Mist and says what\n"
    "would be taken or skipped, and why, storing and sending nothing. --topic keeps\n"
    "to one topic. Only topics with delivery results are in Mist's log: alarms,\n"
    "audits, device-updowns, occupancy-alerts, ping. T is as for brume replay.\n"
    "Exits 1 when Mist refuses the token or cannot be reached.\n";

static const char usage_version[] = "usage: brume version\n";

struct args {
    const char *config;
    const char *secret;
    const char *source;
    const char *since, *until, *topic;
    const char *at; /* brume test --at */
    int sha1, all, send, dry_run;
    const char **rest;
    int nrest;
};

/* Parses the options COMMAND accepts (a string of: c config, s secret and
 * source, 1 sha1). Returns 0, 1 for --help, or -1 after a usage error. */
static int parse_args(int argc, char **argv, const char *accepts, struct args *a) {
    a->config = "brume.lua";
    a->rest = brm_xcalloc((size_t)argc + 1, sizeof(char *));
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        const char **target = NULL;
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) return 1;
        if (strchr(accepts, 'c') && (strcmp(arg, "-c") == 0 || strcmp(arg, "--config") == 0))
            target = &a->config;
        else if (strchr(accepts, 's') && strcmp(arg, "--secret") == 0)
            target = &a->secret;
        else if ((strchr(accepts, 's') || strchr(accepts, 'b')) && strcmp(arg, "--source") == 0)
            target = &a->source;
        else if (strchr(accepts, 'b') && strcmp(arg, "--dry-run") == 0) {
            a->dry_run = 1;
            continue;
        } else if (strchr(accepts, '1') && strcmp(arg, "--sha1") == 0) {
            a->sha1 = 1;
            continue;
        } else if (strchr(accepts, 'a') && strcmp(arg, "--all") == 0) {
            a->all = 1;
            continue;
        } else if (strchr(accepts, 'r') && strcmp(arg, "--send") == 0) {
            a->send = 1;
            continue;
        } else if (strpbrk(accepts, "rb") && strcmp(arg, "--since") == 0) {
            target = &a->since;
        } else if (strpbrk(accepts, "rb") && strcmp(arg, "--until") == 0) {
            target = &a->until;
        } else if (strpbrk(accepts, "rb") && strcmp(arg, "--topic") == 0) {
            target = &a->topic;
        } else if (strchr(accepts, 't') && strcmp(arg, "--at") == 0) {
            target = &a->at;
        } else if (strcmp(arg, "--") == 0) {
            while (++i < argc) a->rest[a->nrest++] = argv[i];
            break;
        } else if (arg[0] == '-' && arg[1] != '\0') {
            fprintf(stderr, "brume: unknown option %s\n", arg);
            return -1;
        } else {
            a->rest[a->nrest++] = arg;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "brume: %s needs a value\n", arg);
            return -1;
        }
        *target = argv[++i];
    }
    return 0;
}

static void print_errors(const struct brm_errors *errs) {
    for (size_t i = 0; i < errs->n; i++) {
        char msg[1024];
        brm_err_format(&errs->v[i], msg, sizeof(msg));
        fprintf(stderr, "%s\n", msg);
    }
}

/* Loads the config at PATH, printing its errors. OFFLINE: for a run that
 * sends nothing, which needs no secret it does not use (see
 * brm_config_load_offline). */
static struct brm_config *load_config_for(const char *path, int offline) {
    struct brm_errors errs = { 0 };
    struct brm_config *c = offline
                               ? brm_config_load_offline(path, brm_api_open_for_config, NULL, &errs)
                               : brm_config_load(path, brm_api_open_for_config, NULL, &errs);
    print_errors(&errs);
    brm_errors_reset(&errs);
    return c;
}

static struct brm_config *load_config(const char *path) {
    return load_config_for(path, 0);
}

static int cmd_run(struct args *a) {
    struct brm_config *cfg = load_config(a->config);
    if (!cfg) return EXIT_USER;
    brm_log_setup(cfg->log_level, cfg->log_format);
    int rc = brm_server_run(cfg);
    brm_config_free(cfg);
    return rc;
}

static int cmd_check(struct args *a) {
    struct brm_errors errs = { 0 };
    struct brm_config *cfg = brm_config_check(a->config, brm_api_open_for_config, NULL, &errs);
    if (cfg) brm_outbox_check_targets(cfg, 0, &errs);
    struct brm_engine *e = cfg ? brm_engine_new(cfg, &errs) : NULL;
    int rc = EXIT_USER;
    print_errors(&errs);
    if (e && errs.n == 0) { /* warnings do not fail the check; errors come first */
        struct brm_errors warnings = { 0 };
        brm_engine_lint(e, &warnings);
        print_errors(&warnings);
        brm_errors_reset(&warnings);
    }
    if (e && errs.n == 0) {
        size_t ntargets = cfg->ntargets - 1; /* not brume.http's own */
        printf("ok: %s: %zu source%s, %zu target%s, %zu rule%s\n", a->config, cfg->nsources,
               cfg->nsources == 1 ? "" : "s", ntargets, ntargets == 1 ? "" : "s",
               brm_engine_rule_count(e), brm_engine_rule_count(e) == 1 ? "" : "s");
        rc = 0;
    }
    brm_errors_reset(&errs);
    brm_engine_free(e);
    brm_config_free(cfg);
    return rc;
}

static int read_input(const char *path, struct brm_buf *out) {
    if (strcmp(path, "-") == 0) path = "/dev/stdin";
    if (brm_read_file(path, MAX_PAYLOAD, out) < 0) {
        fprintf(stderr, "brume: %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Reads the time option OPTION's VALUE into *OUT; on a bad one says why and
 * what a time can be, and returns -1 (a usage error). */
static int parse_time_option(const char *option, const char *value, double now, double *out) {
    struct brm_err err;
    if (brm_parse_time(value, now, out, &err) == 0) return 0;
    fprintf(stderr, "brume: %s '%s': %s\nbrume: %s takes %s\n", option, value, err.msg, option,
            BRM_TIME_FORMS);
    return -1;
}

static double fixed_clock(void *arg) {
    return *(const double *)arg;
}

/* Runs the clock test PATH; 0 when it passed. */
static int run_cases(const struct brm_config *cfg, const char *path, double start) {
    struct brm_err err;
    int rc = brm_cases_run(cfg, path, start, stdout, &err);
    if (rc < 0) {
        char msg[1024];
        brm_err_format(&err, msg, sizeof(msg));
        fprintf(stderr, "%s\n", msg);
    }
    return rc;
}

static int cmd_test(struct args *a) {
    double at = brm_time_now();
    if (a->at && parse_time_option("--at", a->at, at, &at) < 0) return EXIT_USAGE;
    if (a->nrest == 0) {
        fputs(usage_test, stderr);
        return EXIT_USAGE;
    }
    struct brm_config *cfg = load_config_for(a->config, 1);
    if (!cfg) return EXIT_USER;
    brm_log_setup(cfg->log_level, cfg->log_format);
    struct brm_errors errs = { 0 };
    struct brm_engine *e = brm_engine_new(cfg, &errs);
    print_errors(&errs);
    brm_errors_reset(&errs);
    int rc = e ? 0 : EXIT_USER;
    struct brm_state *state = brm_state_new(); /* brume.once and co., for this run only */
    if (e) {
        brm_engine_set_dry_run(e, 1);
        brm_engine_set_state(e, state);
        if (a->at) brm_engine_set_clock(e, fixed_clock, &at);
    }
    for (int i = 0; e && i < a->nrest; i++) {
        if (brm_cases_is_file(a->rest[i])) {
            if (run_cases(cfg, a->rest[i], a->at ? at : BRM_CASES_START) != 0) rc = EXIT_USER;
            continue;
        }
        struct brm_buf body, line;
        struct brm_actions actions = { 0 };
        struct brm_dispatch_stats stats = { 0 };
        struct brm_err err;
        brm_buf_init(&body);
        brm_buf_init(&line);
        struct brm_batch batch = { "test", (uint64_t)i + 1, a->at ? at : brm_time_now(), NULL, NULL,
                                   0 };
        brm_engine_set_payload(e, a->rest[i]);
        if (read_input(a->rest[i], &body) < 0) {
            rc = EXIT_USER;
        } else if (brm_intake_run(e, body.data ? body.data : "", body.len, &batch, &actions, NULL,
                                  &stats, &err) != BRM_OK) {
            fprintf(stderr, "%s: not a Mist webhook body: %s\n", a->rest[i], err.msg);
            rc = EXIT_USER;
        } else {
            for (size_t k = 0; k < actions.n; k++) {
                line.len = 0;
                brm_action_json(&actions.v[k], &line);
                printf("%s\n", line.data);
            }
            if (stats.errors) rc = EXIT_USER;
        }
        fflush(stdout);
        brm_actions_reset(&actions);
        brm_buf_reset(&body);
        brm_buf_reset(&line);
    }
    brm_engine_free(e);
    brm_state_free(state);
    brm_config_free(cfg);
    return rc;
}

/* The store of CFG, with its size cap, or NULL with ERR set. */
static struct brm_store *open_store(const struct brm_config *cfg, struct brm_err *err) {
    char *path = brm_outbox_store_path(cfg);
    struct brm_store *st = brm_store_open(path, err);
    free(path);
    if (st && brm_store_limit(st, cfg->store_max, err) < 0) {
        brm_store_close(st);
        st = NULL;
    }
    return st;
}

struct replay {
    const struct brm_config *cfg;
    struct brm_engine *engine;
    struct brm_store *store;
    struct brm_state *state;
    const char *topic; /* normalised, or NULL */
    int send;
    long bodies, events, messages, stored, failed_bodies;
    long of_topic;          /* bodies of TOPIC met, replayed or not */
    char *seen[MAX_TOPICS]; /* the other topics met, for a TOPIC that matched none */
    size_t nseen;
    int more_seen;
    int rc;
    struct brm_buf line;
};

static void note_topic(struct replay *r, const char *topic) {
    for (size_t i = 0; i < r->nseen; i++)
        if (strcmp(r->seen[i], topic) == 0) return;
    if (r->nseen < MAX_TOPICS)
        r->seen[r->nseen++] = brm_xstrdup(topic);
    else
        r->more_seen = 1;
}

/* A --topic that matched no body: says so, with the topics that were there
 * (in the journal, or received between SINCE and UNTIL, 0 when not given). */
static void report_no_topic(const struct replay *r, const char *topic, double since, double until) {
    char from[40], to[40];
    brm_time_iso8601(since, from, sizeof(from));
    brm_time_iso8601(until, to, sizeof(to));
    fprintf(stderr, "brume: no body of topic %s in the journal", topic);
    if (since && until)
        fprintf(stderr, " received from %s until %s", from, to);
    else if (since || until)
        fprintf(stderr, " received %s %s", since ? "since" : "before", since ? from : to);
    if (r->nseen == 0) {
        fprintf(stderr, " (%s)\n", since || until ? "no body at all then" : "it is empty");
        return;
    }
    fprintf(stderr, " (topics seen: ");
    for (size_t i = 0; i < r->nseen; i++) fprintf(stderr, "%s%s", i ? ", " : "", r->seen[i]);
    fprintf(stderr, "%s)\n", r->more_seen ? ", ..." : "");
}

static int replay_body(void *arg, const struct brm_body *b) {
    struct replay *r = arg;
    struct brm_actions actions = { 0 };
    struct brm_dispatch_stats stats = { 0 };
    struct brm_err err;
    if (r->topic && strcmp(b->topic, r->topic) != 0) {
        note_topic(r, b->topic);
        return 0;
    }
    r->of_topic++;
    if (b->damage) { /* the others go on */
        fprintf(stderr, "brume: body %lld cannot be read (%s): not replayed\n", (long long)b->id,
                b->damage);
        r->failed_bodies++;
        r->rc = EXIT_USER;
        return 0;
    }
    const struct brm_source *src = brm_config_source(r->cfg, b->source);
    struct brm_batch batch = { b->source, (uint64_t)b->id, b->received, src ? &src->dedupe : NULL,
                               NULL,      b->backfilled };
    if (brm_intake_run(r->engine, b->body, b->len, &batch, &actions, NULL, &stats, &err) !=
        BRM_OK) {
        fprintf(stderr, "brume: body %lld no longer decodes: %s\n", (long long)b->id, err.msg);
        r->failed_bodies++;
        return 0;
    }
    r->bodies++;
    r->events += (long)stats.events;
    r->messages += (long)actions.n;
    if (stats.errors) r->rc = EXIT_USER;
    if (!r->send) {
        for (size_t k = 0; k < actions.n; k++) {
            r->line.len = 0;
            brm_action_json(&actions.v[k], &r->line);
            printf("{\"delivery\":%lld,%s\n", (long long)b->id, r->line.data + 1);
        }
    } else if (actions.n) {
        int added = -1;
        if (brm_store_begin(r->store, &err) == 0) {
            added = brm_journal_add_deliveries(r->cfg, r->store, &actions, brm_time_now(), &err);
            if (added < 0 || brm_store_commit(r->store, &err) < 0) {
                brm_store_rollback(r->store);
                added = -1;
            }
        }
        if (added < 0) {
            fprintf(stderr, "brume: %s\n", err.msg);
            r->rc = EXIT_USER;
            brm_actions_reset(&actions);
            return 1;
        }
        r->stored += added;
    }
    brm_actions_reset(&actions);
    return 0;
}

static int cmd_replay(struct args *a) {
    double since = 0, until = 1e18, now = brm_time_now();
    if (a->nrest) {
        fputs(usage_replay, stderr);
        return EXIT_USAGE;
    }
    if ((a->since && parse_time_option("--since", a->since, now, &since) < 0) ||
        (a->until && parse_time_option("--until", a->until, now, &until) < 0))
        return EXIT_USAGE;
    if (a->since && a->until && until <= since) {
        fprintf(stderr,
                "brume: --until '%s' is not after --since '%s': no body can be in between\n",
                a->until, a->since);
        return EXIT_USAGE;
    }
    struct brm_config *cfg = load_config_for(a->config, !a->send); /* a dry run sends nothing */
    if (!cfg) return EXIT_USER;
    struct brm_errors errs = { 0 };
    struct brm_engine *e = brm_engine_new(cfg, &errs);
    print_errors(&errs);
    brm_errors_reset(&errs);
    struct brm_err err;
    struct brm_store *st = e ? open_store(cfg, &err) : NULL;
    struct brm_state *state = brm_state_new(); /* as if the rules had started afresh */
    char topic[BRM_TOPIC_MAX];
    if (a->topic) brm_topic_normalize(a->topic, strlen(a->topic), topic, sizeof(topic));
    struct replay r = {
        .cfg = cfg,
        .engine = e,
        .store = st,
        .state = state,
        .topic = a->topic ? topic : NULL,
        .send = a->send,
    };
    if (!e) {
        r.rc = EXIT_USER;
    } else if (!st) {
        fprintf(stderr, "brume: %s\n", err.msg);
        r.rc = EXIT_USER;
    } else {
        brm_engine_set_state(e, state);
        brm_engine_set_dry_run(e, !a->send);
        if (brm_store_bodies(st, since, until, brm_config_id_skew(cfg), replay_body, &r, &err) <
            0) {
            fprintf(stderr, "brume: %s\n", err.msg);
            r.rc = EXIT_USER;
        }
        fprintf(stderr, "replayed %ld bod%s (%ld events): %ld message%s", r.bodies,
                r.bodies == 1 ? "y" : "ies", r.events, r.messages, r.messages == 1 ? "" : "s");
        if (a->send)
            fprintf(stderr, ", %ld queued (%ld sent before)", r.stored, r.messages - r.stored);
        fprintf(stderr, "%s", a->send ? "" : "; nothing sent (--send to queue them)");
        if (r.failed_bodies)
            fprintf(stderr, "; %ld bod%s not replayed (said above)", r.failed_bodies,
                    r.failed_bodies == 1 ? "y" : "ies");
        fputc('\n', stderr);
        if (r.topic && r.of_topic == 0 && r.rc == 0) {
            report_no_topic(&r, a->topic, a->since ? since : 0, a->until ? until : 0);
            r.rc = EXIT_USER;
        }
        if (a->send && r.stored && since > 0)
            fprintf(stderr,
                    "note: rule state (brume.once, throttle, dedupe) started empty at the "
                    "first body replayed: what it held back then may have been queued now\n");
    }
    brm_buf_reset(&r.line);
    for (size_t i = 0; i < r.nseen; i++) free(r.seen[i]);
    brm_state_free(state);
    brm_store_close(st);
    brm_engine_free(e);
    brm_config_free(cfg);
    return r.rc;
}

static int cmd_sign(struct args *a, int config_given) {
    struct brm_config *cfg = NULL;
    const char *secret = a->secret;
    size_t secret_len = secret ? strlen(secret) : 0;
    int rc = EXIT_USER;
    if (!secret && !config_given) {
        fputs(usage_sign, stderr);
        return EXIT_USAGE;
    }
    if (a->nrest > 1) {
        fputs(usage_sign, stderr);
        return EXIT_USAGE;
    }
    if (!secret) {
        if (!(cfg = load_config(a->config))) return EXIT_USER;
        const struct brm_source *src = NULL;
        if (a->source)
            src = brm_config_source(cfg, a->source);
        else if (cfg->nsources == 1)
            src = &cfg->sources[0];
        if (!src) {
            fprintf(stderr, "brume: %s\n",
                    a->source ? "no such source in the config"
                              : "the config has several sources: "
                                "name one with --source");
            goto done;
        }
        if (src->nsecrets == 0) {
            fprintf(stderr, "brume: source %s has no secret\n", src->name);
            goto done;
        }
        secret = src->secrets[0];
        secret_len = src->secret_len[0];
    }
    struct brm_buf body;
    brm_buf_init(&body);
    if (read_input(a->nrest ? a->rest[0] : "-", &body) == 0) {
        unsigned char mac[BRM_VERIFY_MAX_MAC];
        char hex[2 * BRM_VERIFY_MAX_MAC + 1];
        size_t n = brm_verify_hmac(a->sha1 ? BRM_VERIFY_SHA1 : BRM_VERIFY_SHA256, secret,
                                   secret_len, body.data ? body.data : "", body.len, mac);
        brm_hex_encode(mac, n, hex);
        printf("%s\n", hex);
        rc = 0;
    }
    brm_buf_reset(&body);
done:
    brm_config_free(cfg);
    return rc;
}

/* `brume outbox list`: the rows are gathered first, so each column is as
 * wide as its widest cell. */
enum column {
    COL_ID,
    COL_STATE,
    COL_TARGET,
    COL_ATTEMPTS,
    COL_STATUS,
    COL_CREATED,
    COL_LAST,
    COL_NEXT,
    COL_RULE,
    COL_EVENT,
    COL_EVENT_ID,
    COL_ERROR,
    NCOLUMNS
};

static const char *const column_names[NCOLUMNS] = {
    "ID",   "STATE", "TARGET", "ATTEMPTS", "STATUS",   "CREATED",
    "LAST", "NEXT",  "RULE",   "EVENT",    "EVENT ID", "ERROR",
};

struct lister {
    const struct brm_config *cfg;
    double now;
    char **cells; /* NCOLUMNS per row */
    size_t rows, cap;
    struct brm_buf masked;
};

/* SECONDS as "45s", "12m05s", "3h20m" or "2d04h". */
static void format_span(double seconds, char *out, size_t size) {
    long s = seconds > 0 ? (long)(seconds + 0.5) : 0;
    if (s < 60)
        snprintf(out, size, "%lds", s);
    else if (s < 3600)
        snprintf(out, size, "%ldm%02lds", s / 60, s % 60);
    else if (s < 86400)
        snprintf(out, size, "%ldh%02ldm", s / 3600, s % 3600 / 60);
    else
        snprintf(out, size, "%ldd%02ldh", s / 86400, s % 86400 / 3600);
}

static char *ago(double now, double t) {
    char span[32];
    if (t <= 0) return brm_xstrdup("-");
    format_span(now - t, span, sizeof(span));
    return brm_xasprintf("%s ago", span);
}

/* What the last attempt got: its HTTP status ("ok" for a line written to
 * a file), or, when it got none, what stopped it ("refused", "timeout",
 * "dns", "tls") or the first word of the error; "-" before any attempt. */
static char *attempt_status(const struct brm_delivery *d) {
    static const struct {
        const char *says, *status;
    } causes[] = {
        { "resolve host", "dns" },
        { "resolve proxy", "dns" },
        { "timed out", "timeout" },
        { "Timeout was reached", "timeout" },
        { "Connection refused", "refused" },
        { "connect to server", "refused" },
        { "Failed to connect", "refused" },
        { "SSL", "tls" },
        { "certificate", "tls" },
    };
    const char *e = d->last_error;
    if (d->last_status) return brm_xasprintf("%d", d->last_status);
    if (d->state == BRM_DELIVERY_DONE) return brm_xstrdup("ok"); /* a file target's */
    if (!e || !*e) return brm_xstrdup("-");
    for (size_t i = 0; i < BRM_ARRAY_LEN(causes); i++)
        if (strstr(e, causes[i].says)) return brm_xstrdup(causes[i].status);
    if (strncmp(e, "gave up after ", 14) == 0 && strstr(e, ": ")) e = strstr(e, ": ") + 2;
    return brm_xstrndup(e, strcspn(e, " :"));
}

/* The event that sent D as "<body>:<position>", from its key, and its own
 * id when it has one (not the "topic#position" brume names it by). */
static void event_cells(const struct brm_delivery *d, char **event, char **own_id) {
    size_t body = strcspn(d->key, ":"), pos = 0;
    if (d->key[body] == ':') pos = strcspn(d->key + body + 1, ":");
    *event = brm_xstrndup(d->key, pos ? body + 1 + pos : body);
    char *made = brm_xasprintf("%s#%.*s", d->topic, (int)pos, d->key + body + 1);
    *own_id = brm_xstrdup(strcmp(made, d->event) == 0 ? "-" : d->event);
    free(made);
}

static int gather_delivery(void *arg, const struct brm_delivery *d) {
    static const char *const states[] = { "pending", "done", "dead" };
    struct lister *l = arg;
    if (l->rows == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->cells = brm_xrealloc(l->cells, l->cap * NCOLUMNS * sizeof(char *));
    }
    char **row = l->cells + l->rows++ * NCOLUMNS;
    char next[32] = "-";
    if (d->state == BRM_DELIVERY_PENDING) {
        double in = d->next_at - l->now;
        if (in <= 0) {
            snprintf(next, sizeof(next), "now");
        } else {
            char span[24];
            format_span(ceil(in), span, sizeof(span)); /* "in 0s" would read as now */
            snprintf(next, sizeof(next), "in %s", span);
        }
    }
    brm_outbox_mask(brm_config_target(l->cfg, d->target), d->last_error ? d->last_error : "",
                    &l->masked);
    for (char *p = l->masked.data; p && *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t') *p = ' ';
    row[COL_ID] = brm_xasprintf("%lld", (long long)d->id);
    row[COL_STATE] = brm_xstrdup(states[d->state]);
    row[COL_TARGET] = brm_xstrdup(d->target);
    row[COL_ATTEMPTS] = brm_xasprintf("%d", d->attempts);
    row[COL_STATUS] = attempt_status(d);
    row[COL_CREATED] = ago(l->now, d->created);
    row[COL_LAST] = ago(l->now, d->last_attempt);
    row[COL_NEXT] = brm_xstrdup(next);
    row[COL_RULE] = brm_xstrdup(d->rule);
    event_cells(d, &row[COL_EVENT], &row[COL_EVENT_ID]);
    row[COL_ERROR] = brm_xstrdup(l->masked.data && *l->masked.data ? l->masked.data : "-");
    return 0;
}

/* Prints the gathered rows under their headings. A column no row has a
 * value for is left out; on a terminal the error is cut at its edge. */
static void print_deliveries(const struct lister *l) {
    static const int right[NCOLUMNS] = { [COL_ATTEMPTS] = 1 };
    size_t width[NCOLUMNS];
    int shown[NCOLUMNS];
    for (int c = 0; c < NCOLUMNS; c++) {
        width[c] = strlen(column_names[c]);
        shown[c] = c != COL_EVENT_ID;
        for (size_t r = 0; r < l->rows; r++) {
            const char *cell = l->cells[r * NCOLUMNS + c];
            if (strlen(cell) > width[c]) width[c] = strlen(cell);
            if (strcmp(cell, "-") != 0) shown[c] = 1;
        }
    }
    size_t edge = SIZE_MAX;
    struct winsize ws;
    if (isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        edge = ws.ws_col;
    for (size_t r = 0; r <= l->rows; r++) {
        size_t at = 0;
        for (int c = 0; c < NCOLUMNS; c++) {
            if (!shown[c]) continue;
            const char *cell = r == 0 ? column_names[c] : l->cells[(r - 1) * NCOLUMNS + c];
            if (c == COL_ERROR) {
                size_t room = edge > at ? edge - at : 0, n = strlen(cell);
                if (n > room && room > 3)
                    printf("%.*s...", (int)(room - 3), cell);
                else
                    fputs(cell, stdout);
            } else {
                at += (size_t)printf(right[c] ? "%*s  " : "%-*s  ", (int)width[c], cell);
            }
        }
        putchar('\n');
    }
}

static void lister_reset(struct lister *l) {
    for (size_t i = 0; i < l->rows * NCOLUMNS; i++) free(l->cells[i]);
    free(l->cells);
    brm_buf_reset(&l->masked);
}

static int cmd_outbox(struct args *a) {
    const char *verb = a->nrest ? a->rest[0] : "list";
    int is_list = strcmp(verb, "list") == 0;
    if ((is_list && a->nrest > 1) || (!is_list && a->nrest != 2) ||
        (!is_list && strcmp(verb, "retry") != 0 && strcmp(verb, "drop") != 0)) {
        fputs(usage_outbox, stderr);
        return EXIT_USAGE;
    }
    char *end = NULL;
    long long id = is_list ? 0 : strtoll(a->rest[1], &end, 10);
    if (!is_list && (*end || id <= 0)) {
        fprintf(stderr, "brume: %s is not a delivery id\n", a->rest[1]);
        return EXIT_USAGE;
    }
    struct brm_config *cfg = load_config(a->config);
    if (!cfg) return EXIT_USER;
    struct brm_err err;
    struct brm_store *st = open_store(cfg, &err);
    int rc = EXIT_USER;
    if (!st) {
        fprintf(stderr, "brume: %s\n", err.msg);
    } else if (is_list) {
        struct lister l = { .cfg = cfg, .now = brm_time_now() };
        if (brm_store_list(st, a->all, 1000, gather_delivery, &l, &err) == 0) {
            if (l.rows)
                print_deliveries(&l);
            else
                printf("no deliveries%s\n", a->all ? "" : " pending or dead");
            rc = 0;
        } else {
            fprintf(stderr, "brume: %s\n", err.msg);
        }
        lister_reset(&l);
    } else {
        int found;
        if (verb[0] == 'r') {
            found = brm_store_retry(st, id, &err);
        } else {
            found = brm_store_drop(st, id, &err);
        }
        if (found < 0)
            fprintf(stderr, "brume: %s\n", err.msg);
        else if (!found)
            fprintf(stderr, "brume: no delivery %lld to %s\n", id, verb);
        else
            printf("%s delivery %lld\n", verb[0] == 'r' ? "queued again:" : "dropped:", id);
        rc = found > 0 ? 0 : EXIT_USER;
    }
    brm_store_close(st);
    brm_config_free(cfg);
    return rc;
}

/* Prints REPORT's text: on stdout when the run went through, else on
 * stderr (it ends with what went wrong). */
static int print_report(const char *text, int ok) {
    fputs(text ? text : "", ok ? stdout : stderr);
    return ok ? 0 : EXIT_USER;
}

static int cmd_backfill(struct args *a) {
    double now = brm_time_now(), since = now - 3600, until = 0;
    if (a->nrest) {
        fputs(usage_backfill, stderr);
        return EXIT_USAGE;
    }
    if ((a->since && parse_time_option("--since", a->since, now, &since) < 0) ||
        (a->until && parse_time_option("--until", a->until, now, &until) < 0))
        return EXIT_USAGE;
    if (a->until && until <= since) {
        fprintf(stderr, "brume: --until '%s' is not after --since '%s'\n", a->until,
                a->since ? a->since : "1h");
        return EXIT_USAGE;
    }
    struct brm_config *cfg = load_config(a->config); /* the token is needed, even to look */
    if (!cfg) return EXIT_USER;
    brm_log_setup(cfg->log_level, cfg->log_format);
    struct brm_backfill_ask ask = {
        .source = a->source,
        .since = since,
        .until = until,
        .topic = a->topic,
        .dry_run = a->dry_run,
    };
    struct brm_err err;
    char admin[300];
    int rc = EXIT_USER, running = 0;
    if (brm_backfill_check(cfg, &ask, &err) < 0) {
        fprintf(stderr, "brume: %s\n", err.msg);
    } else if ((running = brm_server_running(cfg, admin, sizeof(admin))) < 0) {
        fprintf(stderr, "brume: cannot read the lock of %s: %s\n", cfg->data_dir, strerror(errno));
    } else if (running && !*admin) {
        fprintf(stderr,
                "brume: a brume runs on %s without an admin listener: set admin (and reload is "
                "not enough: restart it), or stop it to backfill from here\n",
                cfg->data_dir);
    } else if (running) {
        struct brm_buf out;
        brm_buf_init(&out);
        int status = brm_backfill_remote(admin, cfg->admin_token, &ask, &out, &err);
        if (status < 0)
            fprintf(stderr, "brume: %s\n", err.msg);
        else if (status == 200 || status == 502)
            rc = print_report(out.data, status == 200);
        else
            fprintf(stderr, "brume: the running brume answered %d: %s", status,
                    out.data ? out.data : "\n");
        brm_buf_reset(&out);
    } else {
        struct brm_errors errs = { 0 };
        struct brm_backfill_report *report = NULL;
        if (brm_server_backfill(cfg, &ask, &report, &errs) < 0) {
            print_errors(&errs);
        } else {
            rc = print_report(report->text.data, report->ok);
            if (report->messages)
                printf("note: brume is not running: the %ld message%s queued go out when it "
                       "starts\n",
                       report->messages, report->messages == 1 ? "" : "s");
        }
        brm_errors_reset(&errs);
        brm_backfill_report_free(report);
    }
    brm_config_free(cfg);
    return rc;
}

static void print_version(void) {
    printf("brume %s (%s, libevent %s, %s)\n", BRM_VERSION, LUA_RELEASE, event_get_version(),
           OPENSSL_VERSION_TEXT);
}

/*
 * Debian's libcurl links libldap and librtmp, and they link GnuTLS, whose
 * constructor initialises it (and p11-kit) as the process loads: 0.8 MB of
 * the daemon's memory for a library brume never calls (its TLS is
 * OpenSSL's, its transfers http and https only). GnuTLS skips that when
 * GNUTLS_NO_IMPLICIT_INIT is set as it loads, so `brume run` sets it and
 * starts itself again, once, keeping its pid: by its own path, so that its
 * name stays brume's for ps and pgrep (not "exe"), and not when it was
 * started through the dynamic loader, which is then what the path names.
 * When that exec fails it goes on as it is.
 */
static void skip_gnutls_init(char **argv) {
    char path[PATH_MAX];
    if (getenv("GNUTLS_NO_IMPLICIT_INIT")) return;
    ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
    if (n <= 0) return;
    path[n] = '\0';
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    if (strncmp(base, "ld-", 3) == 0 || strncmp(base, "ld.so", 5) == 0) return;
    setenv("GNUTLS_NO_IMPLICIT_INIT", "1", 1);
    execv(path, argv);
}

int main(int argc, char **argv) {
    static const struct {
        const char *name, *accepts, *usage;
    } commands[] = {
        { "run", "c", usage_run },
        { "check", "c", usage_check },
        { "test", "ct", usage_test },
        { "sign", "cs1", usage_sign },
        { "outbox", "ca", usage_outbox },
        { "replay", "cr", usage_replay },
        { "backfill", "cb", usage_backfill },
        { "version", "", usage_version },
    };
    if (argc >= 2 && strcmp(argv[1], "run") == 0) skip_gnutls_init(argv);
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2) {
        fputs(usage_main, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        fputs(usage_main, stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0) cmd = "version";
    for (size_t i = 0; i < BRM_ARRAY_LEN(commands); i++) {
        if (strcmp(cmd, commands[i].name) != 0) continue;
        struct args a = { 0 };
        int p = parse_args(argc - 2, argv + 2, commands[i].accepts, &a);
        int rc;
        int config_given = 0;
        for (int k = 2; k < argc; k++)
            config_given |= strcmp(argv[k], "-c") == 0 || strcmp(argv[k], "--config") == 0;
        if (p == 1) {
            fputs(commands[i].usage, stdout);
            rc = 0;
        } else if (p < 0) {
            fputs(commands[i].usage, stderr);
            rc = EXIT_USAGE;
        } else if (strcmp(cmd, "run") == 0 || strcmp(cmd, "check") == 0) {
            rc = a.nrest         ? (fputs(commands[i].usage, stderr), EXIT_USAGE)
                 : cmd[0] == 'r' ? cmd_run(&a)
                                 : cmd_check(&a);
        } else if (strcmp(cmd, "test") == 0) {
            rc = cmd_test(&a);
        } else if (strcmp(cmd, "sign") == 0) {
            rc = cmd_sign(&a, config_given);
        } else if (strcmp(cmd, "outbox") == 0) {
            rc = cmd_outbox(&a);
        } else if (strcmp(cmd, "replay") == 0) {
            rc = cmd_replay(&a);
        } else if (strcmp(cmd, "backfill") == 0) {
            rc = cmd_backfill(&a);
        } else if (a.nrest) {
            fputs(commands[i].usage, stderr);
            rc = EXIT_USAGE;
        } else {
            print_version();
            rc = 0;
        }
        free(a.rest);
        return rc;
    }
    fprintf(stderr, "brume: unknown command '%s'\n\n%s", cmd, usage_main);
    return EXIT_USAGE;
}
