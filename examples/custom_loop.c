/* SPDX-License-Identifier: MIT */
/* A training loop written by hand over Stoker's installed API: a loader
 * with worker processes and augmentation, forward, backward, optimizer and
 * scheduler steps, evaluation, and a checkpoint per epoch that the next
 * run resumes from. docs/custom-loop.md walks through it.
 *   custom_loop TRAIN_SET TEST_SET CHECKPOINT_DIR EPOCHS */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>

#include <stoker/stoker.h>

/* Every call returns 0 or a negative code; stk_error_message() says why. */
#define CHECK(call) do { int rc_ = (call); if (rc_ < 0) { \
    fprintf(stderr, "%s: %s (%s)\n", #call, stk_error_message(), stk_err_name(rc_)); exit(1); } } while (0)

static const char model_text[] = "input shape=1,28,28\n conv2d out=16 kernel=3 pad=1\n batchnorm2d\n relu\n"
                                 "maxpool2d kernel=2\n flatten\n dropout p=0.1\n linear out=10\n cross_entropy\n";

/* 2 worker processes crop, flip (training only) and normalize: the images arrive
 * as f32. Training batches come in an order drawn from (seed, epoch). */
static stk_loader_t *make_loader(const char *path, int train, stk_dataset_t **ds)
{
    CHECK(stk_dataset_shard_create(ds, path, NULL)); /* .stk shards from stoker-pack */
    stk_loader_config_t c;
    stk_loader_config_default(&c);
    c.batch_size = 64;
    c.drop_last = train;
    c.shuffle = train;
    c.seed = 1;
    c.num_workers = 2;
    c.persistent_workers = 1;
    c.augment = train ? "crop:28,pad=2|hflip|normalize:mean=0.286,std=0.353" : "normalize:mean=0.286,std=0.353";
    stk_loader_t *l;
    CHECK(stk_loader_create(&l, *ds, &c));
    return l;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s TRAIN_SET TEST_SET CHECKPOINT_DIR EPOCHS\n", argv[0]);
        return 2;
    }
    uint64_t epochs = strtoull(argv[4], NULL, 10);
    CHECK(stk_loader_forkserver_start()); /* workers fork from this clean process */
    stk_dataset_t *train_ds, *test_ds;
    stk_loader_t *train = make_loader(argv[1], 1, &train_ds), *test = make_loader(argv[2], 0, &test_ds);

    stk_model_builder_t *b;
    CHECK(stk_model_builder_create(&b));
    CHECK(stk_model_builder_parse(b, model_text, "custom_loop"));
    stk_model_config_t mc;
    stk_model_config_default(&mc);
    mc.batch_size = 64;
    stk_model_t *model;
    CHECK(stk_model_create(&model, b, &mc));
    stk_model_builder_destroy(&b);
    /* No weight decay on biases and batchnorm; a schedule that does not
     * depend on the run's length, so that a resumed run may go on longer. */
    stk_optim_t *opt;
    CHECK(stk_optim_create_for_model(&opt, model, "sgd:lr=0.01,momentum=0.9,weight_decay=5e-4,no_decay=bias_norm"));
    stk_sched_t *sched;
    CHECK(stk_sched_create_from_text(&sched, opt, "warmup:0.5ep,start=0.1|step:step_size=1ep,gamma=0.7",
                                     (int64_t)stk_loader_len(train), 0));
    stk_train_inputs_t *inputs;
    CHECK(stk_train_inputs_create(&inputs, NULL)); /* defaults: fields "image" and "label" */

    /* Resume when the folder holds a checkpoint. */
    stk_train_parts_t parts = {model, opt, sched};
    stk_train_state_t st;
    char path[4096];
    if (stk_ckpt_dir_latest(argv[3], NULL, path, sizeof path) == 0) {
        CHECK(stk_train_checkpoint_load(path, &parts, &st)); /* the model's dropout step too */
        printf("resumed run %s at epoch %llu from %s\n", st.run_id, (unsigned long long)st.epoch, path);
    } else {
        CHECK(stk_train_state_init(&st, 1));
    }

    while (st.epoch < epochs) {
        CHECK(stk_loader_set_epoch(train, st.epoch)); /* the model is in training mode */
        stk_batch_t batch;
        double loss_sum = 0;
        int rc;
        while ((rc = stk_loader_next(train, &batch)) == 0) {
            stk_tensor_t x, y;
            float loss;
            CHECK(stk_train_inputs_get(inputs, &batch, &x, &y));
            CHECK(stk_model_forward_tensor(model, &x, &y, &loss)); /* a new dropout mask each time */
            CHECK(stk_model_backward(model));
            CHECK(stk_optim_step_model(opt, model));
            CHECK(stk_sched_step(sched));
            stk_model_zero_grad(model);
            stk_loader_release(train, &batch);
            loss_sum += loss;
            st.step++;
            st.micro++;
        }
        CHECK(rc); /* STK_DONE (positive) ends the epoch */
        stk_train_eval_t ev;
        CHECK(stk_train_evaluate(model, test, inputs, 5, NULL, &ev));
        printf("epoch %llu: train loss %.4f, test loss %.4f, accuracy %.2f%% (top-5 %.2f%%)\n",
               (unsigned long long)st.epoch + 1, loss_sum / (double)stk_loader_len(train), ev.loss, 100 * ev.top1,
               100 * ev.topk);
        stk_train_epoch_t row = {.epoch = ++st.epoch, .step = st.step, .test_loss = ev.loss, .test_acc = ev.top1};
        CHECK(stk_train_state_push_epoch(&st, &row));
        st.loader = (stk_loader_state_t){st.epoch, 0}; /* the next epoch, from its start */
        CHECK(stk_train_checkpoint_save(argv[3], &parts, &st, NULL, 0, 2, path, sizeof path));
        printf("saved %s\n", path);
    }

    stk_train_state_clear(&st);
    stk_train_inputs_destroy(&inputs);
    stk_sched_destroy(&sched);
    stk_optim_destroy(&opt);
    stk_model_destroy(&model);
    stk_loader_destroy(&train);
    stk_loader_destroy(&test);
    stk_dataset_destroy(&train_ds);
    stk_dataset_destroy(&test_ds);
    stk_loader_forkserver_stop();
    return 0;
}
