/* SPDX-License-Identifier: MIT */
/* stoker-train's reports: one JSON line of metrics per epoch, the final
 * summary table, and an SVG plot (loss, accuracy, lr per epoch) drawn by
 * hand so that the tool needs no plotting library. */
#define _GNU_SOURCE
#include "stoker-train.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* JSON has no NaN or infinity: write null for them. */
static void json_num(FILE *f, const char *key, double v, int last)
{
    if (isfinite(v))
        fprintf(f, "\"%s\":%.6g%s", key, v, last ? "" : ",");
    else
        fprintf(f, "\"%s\":null%s", key, last ? "" : ",");
}

int train_metrics_write(FILE *f, const char *run_id, const stk_train_epoch_t *s)
{
    fprintf(f, "{\"run\":\"%s\",\"epoch\":%llu,\"step\":%llu,", run_id, (unsigned long long)s->epoch,
            (unsigned long long)s->step);
    json_num(f, "train_loss", s->train_loss, 0);
    json_num(f, "train_acc", s->train_acc, 0);
    json_num(f, "test_loss", s->test_loss, 0);
    json_num(f, "test_acc", s->test_acc, 0);
    json_num(f, "test_top5", s->test_topk, 0);
    json_num(f, "lr", s->lr, 0);
    json_num(f, "images_per_s", s->images_per_s, 0);
    json_num(f, "data_wait", s->data_wait, 0);
    json_num(f, "epoch_s", s->epoch_s, 1);
    fputs("}\n", f);
    if (fflush(f) != 0 || ferror(f))
        return -EIO;
    return 0;
}

void train_summary_print(FILE *f, const stk_train_epoch_t *hist, size_t n)
{
    fprintf(f, "%5s %8s %10s %9s %10s %9s %10s %9s %8s %7s\n", "epoch", "step", "train_loss", "train_acc",
            "test_loss", "test_acc", "lr", "images/s", "wait", "time_s");
    for (size_t i = 0; i < n; i++) {
        const stk_train_epoch_t *s = &hist[i];
        fprintf(f, "%5llu %8llu %10.4f %8.2f%% %10.4f %8.2f%% %10.3g %9.0f %7.2f%% %7.1f\n",
                (unsigned long long)s->epoch,
                (unsigned long long)s->step, s->train_loss, 100 * s->train_acc, s->test_loss, 100 * s->test_acc,
                s->lr, s->images_per_s, 100 * s->data_wait, s->epoch_s);
    }
}

int train_metrics_run(const char *path, char *run_id, size_t cap, size_t *lines)
{
    run_id[0] = '\0';
    *lines = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return errno == ENOENT ? 0 : -errno;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        if (*lines == 0) {
            const char *p = strstr(line, "\"run\":\"");
            if (p) {
                p += 7;
                const char *q = strchr(p, '"');
                if (q && (size_t)(q - p) < cap) {
                    memcpy(run_id, p, (size_t)(q - p));
                    run_id[q - p] = '\0';
                }
            } else if (cap > 1) {
                run_id[0] = '?'; /* a line without a run: an older stoker-train's */
                run_id[1] = '\0';
            }
        }
        (*lines)++;
    }
    int bad = ferror(f);
    fclose(f);
    return bad ? -EIO : 0;
}

/* ---- SVG ---------------------------------------------------------------- */

typedef struct panel {
    const char *title;
    double x, y, w, h; /* plot area in pixels */
    double lo, hi;     /* y range */
} panel_t;

static double px(const panel_t *p, double epoch, double max_epoch)
{
    double span = max_epoch > 1 ? max_epoch - 1 : 1;
    return p->x + (epoch - 1) / span * p->w;
}

static double py(const panel_t *p, double v)
{
    double span = p->hi > p->lo ? p->hi - p->lo : 1;
    return p->y + p->h - (v - p->lo) / span * p->h;
}

static void axes(FILE *f, const panel_t *p, double max_epoch, int percent)
{
    fprintf(f, "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='none' stroke='#444'/>\n", p->x, p->y, p->w,
            p->h);
    fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='middle' font-weight='bold'>%s</text>\n", p->x + p->w / 2,
            p->y - 8, p->title);
    for (int i = 0; i <= 4; i++) {
        double v = p->lo + (p->hi - p->lo) * i / 4;
        double y = py(p, v);
        fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#ddd'/>\n", p->x, y, p->x + p->w, y);
        if (percent)
            fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='end' font-size='10'>%.1f%%</text>\n", p->x - 4, y + 3,
                    100 * v);
        else
            fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='end' font-size='10'>%.3g</text>\n", p->x - 4, y + 3, v);
    }
    int ticks = max_epoch < 10 ? (int)max_epoch : 10;
    for (int i = 0; i < ticks; i++) {
        double e = 1 + (max_epoch - 1) * (ticks > 1 ? (double)i / (ticks - 1) : 0);
        e = round(e);
        fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='middle' font-size='10'>%.0f</text>\n", px(p, e, max_epoch),
                p->y + p->h + 14, e);
    }
    fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='middle' font-size='10'>epoch</text>\n", p->x + p->w / 2,
            p->y + p->h + 28);
}

static void series(FILE *f, const panel_t *p, const stk_train_epoch_t *hist, size_t n, size_t field_off,
                   const char *color, const char *label, int slot)
{
    double max_epoch = n ? hist[n - 1].epoch : 1;
    fprintf(f, "<polyline fill='none' stroke='%s' stroke-width='2' points='", color);
    for (size_t i = 0; i < n; i++) {
        double v = *(const double *)((const char *)&hist[i] + field_off);
        if (isfinite(v))
            fprintf(f, "%.1f,%.1f ", px(p, hist[i].epoch, max_epoch), py(p, v));
    }
    fputs("'/>\n", f);
    for (size_t i = 0; i < n; i++) {
        double v = *(const double *)((const char *)&hist[i] + field_off);
        if (isfinite(v))
            fprintf(f, "<circle cx='%.1f' cy='%.1f' r='2.5' fill='%s'/>\n", px(p, hist[i].epoch, max_epoch), py(p, v),
                    color);
    }
    double ly = p->y + 12 + 14 * slot;
    fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='%s' stroke-width='2'/>\n", p->x + p->w - 90, ly,
            p->x + p->w - 72, ly, color);
    fprintf(f, "<text x='%.1f' y='%.1f' font-size='10'>%s</text>\n", p->x + p->w - 68, ly + 3, label);
}

static void range_of(const stk_train_epoch_t *hist, size_t n, const size_t *offs, size_t noffs, double *lo,
                     double *hi, int zero_floor)
{
    *lo = INFINITY;
    *hi = -INFINITY;
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < noffs; k++) {
            double v = *(const double *)((const char *)&hist[i] + offs[k]);
            if (!isfinite(v))
                continue;
            if (v < *lo)
                *lo = v;
            if (v > *hi)
                *hi = v;
        }
    if (!isfinite(*lo)) {
        *lo = 0;
        *hi = 1;
    }
    if (zero_floor)
        *lo = 0;
    if (*hi <= *lo)
        *hi = *lo + (*lo ? fabs(*lo) * 0.1 : 1);
    double pad = (*hi - *lo) * 0.05;
    if (!zero_floor)
        *lo -= pad;
    *hi += pad;
}

int train_plot_svg(const char *path, const stk_train_epoch_t *hist, size_t n)
{
    char tmp[TRAIN_PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -errno;
    const double W = 1080, H = 340;
    double max_epoch = n ? hist[n - 1].epoch : 1;
    fprintf(f, "<svg xmlns='http://www.w3.org/2000/svg' width='%.0f' height='%.0f' font-family='sans-serif' "
               "font-size='12'>\n<rect width='100%%' height='100%%' fill='white'/>\n",
            W, H);
    panel_t loss = {"loss", 60, 40, 280, 240, 0, 1};
    panel_t acc = {"accuracy", 420, 40, 280, 240, 0, 1};
    panel_t lr = {"learning rate", 780, 40, 280, 240, 0, 1};
    size_t loss_offs[] = {offsetof(stk_train_epoch_t, train_loss), offsetof(stk_train_epoch_t, test_loss)};
    size_t acc_offs[] = {offsetof(stk_train_epoch_t, train_acc), offsetof(stk_train_epoch_t, test_acc)};
    size_t lr_offs[] = {offsetof(stk_train_epoch_t, lr)};
    range_of(hist, n, loss_offs, 2, &loss.lo, &loss.hi, 1);
    range_of(hist, n, acc_offs, 2, &acc.lo, &acc.hi, 0);
    if (acc.hi > 1)
        acc.hi = 1;
    range_of(hist, n, lr_offs, 1, &lr.lo, &lr.hi, 1);
    axes(f, &loss, max_epoch, 0);
    axes(f, &acc, max_epoch, 1);
    axes(f, &lr, max_epoch, 0);
    series(f, &loss, hist, n, loss_offs[0], "#1f77b4", "train", 0);
    series(f, &loss, hist, n, loss_offs[1], "#d62728", "test", 1);
    series(f, &acc, hist, n, acc_offs[0], "#1f77b4", "train", 0);
    series(f, &acc, hist, n, acc_offs[1], "#d62728", "test", 1);
    series(f, &lr, hist, n, lr_offs[0], "#2ca02c", "lr (end)", 0);
    fputs("</svg>\n", f);
    int rc = 0;
    if (fflush(f) != 0 || ferror(f) || fsync(fileno(f)) != 0)
        rc = -EIO;
    if (fclose(f) != 0 && rc == 0)
        rc = -EIO;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    if (rc)
        unlink(tmp);
    return rc;
}
