/* A C program that runs an exported kiln model through its C library, with no Python: reads
 * each input from a raw file, writes each output to a raw file.
 * usage: driver WEIGHTS IN_0 ... IN_n OUT_0 ... OUT_m */
#include <stdio.h>
#include <stdlib.h>

#include "kiln_model.h"

static void *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *data = malloc(n ? n : 1);
    if (fread(data, 1, n, f) != (size_t)n) { free(data); data = NULL; }
    fclose(f);
    return data;
}

int main(int argc, char **argv) {
    const int ni = KILN_MODEL_NUM_INPUTS, no = KILN_MODEL_NUM_OUTPUTS;
    if (argc != 2 + ni + no) { fprintf(stderr, "usage: driver WEIGHTS INPUTS... OUTPUTS...\n"); return 2; }
    kiln_model *m = kiln_model_load(argv[1]);
    if (!m) { fprintf(stderr, "load failed: %s\n", kiln_model_error()); return 3; }
    const void *inputs[KILN_MODEL_NUM_INPUTS];
    for (int i = 0; i < ni; i++) {
        inputs[i] = read_file(argv[2 + i]);
        if (!inputs[i]) { fprintf(stderr, "cannot read %s\n", argv[2 + i]); return 4; }
    }
    const long numel[] = {KILN_MODEL_OUTPUT0_NUMEL};
    const long itemsize[] = {KILN_MODEL_OUTPUT0_ITEMSIZE};
    void *outputs[KILN_MODEL_NUM_OUTPUTS];
    for (int i = 0; i < no; i++) outputs[i] = malloc(numel[i] * itemsize[i]);
    if (kiln_model_run(m, inputs, outputs) != 0) {
        fprintf(stderr, "run failed: %s\n", kiln_model_error());
        return 5;
    }
    for (int i = 0; i < no; i++) {
        FILE *f = fopen(argv[2 + ni + i], "wb");
        fwrite(outputs[i], itemsize[i], numel[i], f);
        fclose(f);
    }
    kiln_model_free(m);
    return 0;
}
