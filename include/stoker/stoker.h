/* SPDX-License-Identifier: MIT */
/* Everything Stoker offers, in one include. */
#ifndef STOKER_STOKER_H
#define STOKER_STOKER_H

#include "stoker/common.h"
#include "stoker/shard.h"
#include "stoker/sampler.h"
#include "stoker/augment.h"
#include "stoker/loader.h"
#include "stoker/pack.h"
#include "stoker/engine.h"
#include "stoker/optim.h"
#include "stoker/checkpoint.h"
#include "stoker/train.h"
#include "stoker/dist.h"

#endif
