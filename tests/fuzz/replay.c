/* SPDX-License-Identifier: MIT */
#include "replay.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static int replay_file(const char *name, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "%s: cannot open %s\n", name, path);
        return -1;
    }
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 65536;
            uint8_t *p = realloc(buf, cap);
            if (!p)
                abort();
            buf = p;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        if (n == 0)
            break;
        len += n;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        fprintf(stderr, "%s: cannot read %s\n", name, path);
        free(buf);
        return -1;
    }
    LLVMFuzzerTestOneInput(buf, len);
    free(buf);
    return 0;
}

int stk_fuzz_replay(const char *name, int argc, char **argv)
{
    int files = 0, errors = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "%s: cannot stat %s\n", name, argv[i]);
            errors++;
        } else if (S_ISDIR(st.st_mode)) {
            struct dirent **names;
            int n = scandir(argv[i], &names, NULL, alphasort);
            for (int k = 0; k < n; k++) {
                char p[4096];
                snprintf(p, sizeof p, "%s/%s", argv[i], names[k]->d_name);
                if (names[k]->d_name[0] != '.' && stat(p, &st) == 0 && S_ISREG(st.st_mode)) {
                    errors += replay_file(name, p) != 0;
                    files++;
                }
                free(names[k]);
            }
            free(names);
            if (n < 0) {
                fprintf(stderr, "%s: cannot list %s\n", name, argv[i]);
                errors++;
            }
        } else {
            errors += replay_file(name, argv[i]) != 0;
            files++;
        }
    }
    printf("%s: replayed %d inputs\n", name, files);
    if (files == 0) {
        fprintf(stderr, "%s: no inputs\n", name);
        return 1;
    }
    return errors ? 1 : 0;
}
