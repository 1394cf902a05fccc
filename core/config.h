/*
 * config: loads brume.lua, the user's Lua config file. The file runs in a
 * sandbox (see sandbox.h) that adds env(NAME [, default]) and file(PATH)
 * for secrets; the globals it sets are then checked against a declarative
 * table of settings, and every unknown key, wrong type or bad value is
 * reported as "file:line: setting: problem". Relative paths resolve from
 * the config file's folder. Each target's options are checked by its
 * kind's adapter (scripts/brume/targets/<kind>.lua), run in a sandbox of
 * its own; the adapters may call the brume module, which the caller opens
 * there through a hook (the module reads the config, so config does not
 * depend on it). The result is immutable and shared by every thread.
 * Depends on sandbox, json, log, util, redis (to check a Redis URL).
 */
#ifndef BRM_CONFIG_H
#define BRM_CONFIG_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define BRM_MAX_WORKERS 64

/* The fields that tell a topic's events apart, for dedupe. */
struct brm_dedupe_topic {
    char *topic;   /* normalised: '_' read as '-' */
    char **fields; /* "mac", or "a.b" for field b of object a */
    size_t nfields;
};

/* A source's dedupe: an event whose fingerprint (the whole event, or the
 * fields named for its topic) was seen on its topic within WINDOW seconds
 * is not run again. */
struct brm_dedupe {
    double window; /* 0: off */
    struct brm_dedupe_topic *topics;
    size_t ntopics;
};

/* A webhook source: one path Mist posts to, and how to check it. */
struct brm_source {
    char *name;
    char *path;       /* "/mist" */
    char *secrets[2]; /* two during a rotation */
    size_t secret_len[2];
    int nsecrets;
    int allow_sha1; /* also accept the legacy X-Mist-Signature */
    int insecure;   /* accept unsigned posts (no secret) */
    uint64_t max_body;
    struct brm_dedupe dedupe;
    int durable; /* 0 (durability = "none"): answered before the commit */
    /* Where Mist keeps this webhook's delivery log, for backfill (api NULL:
     * nowhere). One of org_id and site_id. */
    struct {
        char *api, *token, *org_id, *site_id, *webhook_id;
        double every;    /* backfill on a schedule this often; 0: not */
        double catch_up; /* at start, back to the last body stored, at most this far */
    } mist;
};

/* A named destination for brume.send: a kind (its adapter is
 * scripts/brume/targets/<kind>.lua) and the options the adapter checked. */
struct brm_target {
    char *name;
    char *kind;    /* "slack", "file", ...; "http" for brume.http's own target */
    char *options; /* JSON: the checked options, defaults filled in */
    double timeout, max_age;
    double backoff; /* wait before the first retry, doubled after each */
    double rate;    /* messages per second; 0: no limit */
    long concurrency;
    char *proxy;          /* or NULL: the usual environment variables */
    char *path;           /* kind file: the file, resolved */
    char *signing_secret; /* Standard Webhooks secret (kind webhook), or NULL */
    char **secrets;       /* option values never shown */
    size_t nsecrets;
    char **settings; /* a kind with a transport of its own (kafka...): its adapter's settings,
                        NSETTINGS name, value pairs (2 * NSETTINGS strings) */
    size_t nsettings;
    int ticket;  /* the adapter makes ticket plans */
    int bad;     /* its options were refused (only in a config from brm_config_check) */
    char *unset; /* an offline load: the env() variable its options need that is not set */
};

/* A listening address, with TLS when CERT and KEY are set. */
struct brm_listen {
    char *addr;       /* "host:port" */
    char *cert, *key; /* PEM files, resolved; NULL: plain HTTP */
};

/* The name of the target brume.http sends through. */
#define BRM_HTTP_TARGET "http"

struct brm_config {
    _Atomic int refs; /* see brm_config_ref */
    char *file;       /* as given */
    char *dir;        /* its folder */
    struct brm_listen *listen;
    size_t nlisten;
    char *admin;       /* NULL: no admin listener */
    char *admin_token; /* NULL: none (then the admin listener is loopback only) */
    int watch;         /* reload when the config, rules or scripts change */
    int workers;       /* resolved: at least 1 */
    char *data_dir, *rules_dir, *scripts_dir;
    long instructions;
    double time_limit; /* CPU seconds one rule call may take, whatever its budget */
    uint64_t memory;
    struct {
        double header_timeout, body_timeout, idle_timeout, drain_timeout;
        long max_connections;
        uint64_t max_unverified; /* bytes held for bodies still coming, all connections */
    } http;
    int log_level, log_format;
    struct {
        double retention;  /* seconds bodies are kept */
        uint64_t max_size; /* bytes of bodies kept at most; 0: no limit */
    } journal;
    uint64_t store_max; /* the database file's cap; 0: none */
    /* Where rule state lives: the embedded store (url and sentinels NULL),
     * or Redis, shared with the other brumes that name it. */
    struct {
        char *url;        /* redis://[[user:]password@]host:port/db, rediss:// for TLS */
        char *password;   /* when not in the URL */
        char *ca;         /* rediss://: the CA that signed the server's certificate */
        char **sentinels; /* "host:port" of Redis Sentinels, with master (instead of url) */
        size_t nsentinels;
        char *master;
        int db, tls;    /* with sentinels */
        char *prefix;   /* of every key brume makes ("brume:") */
        double timeout; /* seconds a Redis call may take */
        double lease;   /* seconds a claimed timer is held before another instance may fire it */
    } state;
    struct brm_source *sources;
    size_t nsources;
    struct brm_target *targets;
    size_t ntargets;
};

struct brm_sandbox;

/*
 * Readies SB, the VM the targets' adapters check their options in, before
 * any adapter loads: opens what adapters may call (the brume module; see
 * brm_api_open_for_config). C is the config as far as it was read, ARG
 * what the caller passed with the hook.
 */
typedef void brm_config_open_fn(struct brm_sandbox *sb, const struct brm_config *c, void *arg);

/*
 * Loads and checks PATH; OPEN(sb, c, ARG) readies the adapters' VM (NULL:
 * the adapters see no brume module). Returns the config, or NULL with at
 * least one error appended to ERRS (all that were found, not only the
 * first).
 */
struct brm_config *brm_config_load(const char *path, brm_config_open_fn *open, void *arg,
                                   struct brm_errors *errs);
/* The same for `brume check`, which goes on to the rules whatever else is
 * wrong: returns the config as far as it could be read (targets that were
 * refused left out) even with errors appended, NULL only when the file
 * could not be read or run. */
struct brm_config *brm_config_check(const char *path, brm_config_open_fn *open, void *arg,
                                    struct brm_errors *errs);
/*
 * The same for runs that send nothing (brume test, a dry replay): they need
 * no secret that a message does not use. An env() variable that is not set
 * gives a placeholder where secrets go (a source's secret, the admin
 * token, targets' options) instead of an error; a target whose options
 * hold one has its `unset` set, is not checked by its adapter, and
 * brume.send to it fails ("target secops needs MIST_X, which is not
 * set"). Anywhere else an unset variable is still an error. The daemon
 * never loads this way.
 */
struct brm_config *brm_config_load_offline(const char *path, brm_config_open_fn *open, void *arg,
                                           struct brm_errors *errs);
/* A source's dedupe fields for TOPIC (normalised), or NULL: the whole
 * event is its fingerprint. */
const struct brm_dedupe_topic *brm_config_dedupe_fields(const struct brm_dedupe *d,
                                                        const char *topic);
/* A config is shared, read-only, by whoever runs on it (engines, the
 * outbox, the server): each holder takes a reference and drops it with
 * brm_config_free, which frees the config with the last one. A reload
 * makes a new config; the old one lives until the last event, delivery or
 * request that began on it is done. */
const struct brm_config *brm_config_ref(const struct brm_config *c);
void brm_config_free(const struct brm_config *c);

const struct brm_target *brm_config_target(const struct brm_config *c, const char *name);
const struct brm_source *brm_config_source(const struct brm_config *c, const char *name);
/* The most seconds after its first byte came (its received time) a body
 * gets its journal id: the live path's header and body timeouts, and one
 * more. Journal ids grow with received times within it. */
double brm_config_id_skew(const struct brm_config *c);

#endif
