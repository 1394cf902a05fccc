/*
 * outbox: delivers the messages rules send to their targets. In this
 * version every target is of kind "file": each message becomes one JSON
 * line ({"at", "rule", "target", "topic", "event", "message"}); the lines
 * of one body go to each file in a single write(2) on a file opened
 * O_APPEND, so lines from several workers never interleave. Depends on config, api (the action
 * list), util.
 */
#ifndef BRM_OUTBOX_H
#define BRM_OUTBOX_H

#include "api.h"
#include "config.h"

struct brm_outbox;

/* Opens every target of CFG (creating missing folders). NULL with ERR set
 * when one cannot be opened. CFG must outlive the outbox. */
struct brm_outbox *brm_outbox_new(const struct brm_config *cfg, struct brm_err *err);
void brm_outbox_free(struct brm_outbox *ob);

/* Delivers every action of A. Returns 0, or -1 with ERR set when a target
 * could not take its message (the caller answers 503). Thread-safe. */
int brm_outbox_deliver(struct brm_outbox *ob, const struct brm_actions *a, struct brm_err *err);

/* Appends ACTION as one JSON object: {"rule", "target", "topic", "event",
 * "message"}, with "at" first when AT > 0. */
void brm_action_json(const struct brm_action *action, double at, struct brm_buf *out);

#endif
