/*
 * Balanced assignment on the CPU: an auction (Bertsekas 1988) in which experts sell slots, run to
 * completion. fairseq_smlp/modules/balanced_assignment.py calls it for CPU tensors, where no
 * device waits for the host and a loop of data-dependent length costs only its own work.
 *
 * Every expert has C slots, each holding an item and the bid it paid; the expert's price is the
 * lowest bid it holds (0 while a slot is free), at the root of a min-heap of its slots. An
 * unplaced item bids for the expert of highest score minus price, offering that price plus its
 * margin over the next best expert plus eps; the bid takes the cheapest slot and evicts its
 * holder, which bids again. Every holder then stays within eps of its best expert at the final
 * prices. Placeholder items, of score 0 for every expert once the scores are shifted to start
 * at 0, make items and slots equal in number, so every slot ends full and the assignment is
 * within (E * C) * eps of the best total affinity (linear programming duality); measured, it is
 * much closer (docs/design.md).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* The bid increment, relative to the spread of a problem's scores. */
#define EPS 0.005
/* What is still unplaced after this many bids per slot takes the free slots in queue order, so
 * that no input can keep a training step waiting long. */
#define MAX_BIDS_PER_SLOT 1000

typedef struct {
    int64_t slots;     /* S = E * C, placeholders included */
    int64_t experts;   /* E */
    int64_t capacity;  /* C */
    double *value;     /* (S, E) shifted scores, placeholder rows 0 */
    double *price;     /* (E, C) one min-heap of the bids held per expert */
    double *cheapest;  /* (E) each expert's price, the root of its heap, contiguous */
    int64_t *holder;   /* (E, C) the item in each slot, -1 if free */
    int64_t *expert;   /* (S) each item's expert */
    int64_t *queue;    /* (S) ring buffer of the unplaced items */
} Auction;

/* Restores the heap order of (price, holder) after the root's price went up. */
static void sift_down(double *price, int64_t *holder, int64_t size) {
    int64_t node = 0;
    for (;;) {
        int64_t child = 2 * node + 1;
        if (child >= size) return;
        if (child + 1 < size && price[child + 1] < price[child]) child++;
        if (price[node] <= price[child]) return;
        double p = price[node];
        price[node] = price[child];
        price[child] = p;
        int64_t h = holder[node];
        holder[node] = holder[child];
        holder[child] = h;
        node = child;
    }
}

/* Places every item, each within eps of its best expert at the prices the auction ends with. */
static void run_auction(Auction *a, double eps) {
    const int64_t S = a->slots, E = a->experts, C = a->capacity;
    for (int64_t i = 0; i < S; i++) {
        a->price[i] = 0.0;
        a->holder[i] = -1;
        a->queue[i] = i;
    }
    for (int64_t e = 0; e < E; e++) a->cheapest[e] = 0.0;
    int64_t head = 0, waiting = S;
    for (int64_t bids = 0; waiting > 0 && bids < MAX_BIDS_PER_SLOT * S; bids++) {
        const int64_t item = a->queue[head];
        head = (head + 1) % S;
        waiting--;
        const double *row = a->value + item * E;
        int64_t best_expert = 0;
        double best = -INFINITY, second = -INFINITY;
        for (int64_t e = 0; e < E; e++) {
            const double v = row[e] - a->cheapest[e];
            if (v > best) {
                second = best;
                best = v;
                best_expert = e;
            } else if (v > second) {
                second = v;
            }
        }
        double *heap = a->price + best_expert * C;
        int64_t *holders = a->holder + best_expert * C;
        const int64_t evicted = holders[0];
        heap[0] += best - second + eps;
        holders[0] = item;
        a->expert[item] = best_expert;
        sift_down(heap, holders, C);
        a->cheapest[best_expert] = heap[0];
        if (evicted >= 0) a->queue[(head + waiting++) % S] = evicted;
    }
    for (int64_t slot = 0; slot < S && waiting > 0; slot++) {
        if (a->holder[slot] >= 0) continue;
        const int64_t item = a->queue[head];
        head = (head + 1) % S;
        waiting--;
        a->holder[slot] = item;
        a->expert[item] = slot / C;
    }
}

/* scores: (N, E) float32; out: (N) the expert of each item. */
static void assign(Auction *a, const float *scores, int64_t items, int64_t *out) {
    const int64_t E = a->experts, S = a->slots;
    double lowest = INFINITY, highest = -INFINITY;
    for (int64_t i = 0; i < items * E; i++) {
        if (!isfinite(scores[i])) continue;
        if (scores[i] < lowest) lowest = scores[i];
        if (scores[i] > highest) highest = scores[i];
    }
    if (lowest > highest) lowest = highest = 0.0;  /* nothing finite: every assignment is as good */
    /* NaN and infinite affinities count as the lowest finite one, as in fairseq's BaseLayer. */
    for (int64_t i = 0; i < items * E; i++)
        a->value[i] = isfinite(scores[i]) ? scores[i] - lowest : 0.0;
    for (int64_t i = items * E; i < S * E; i++) a->value[i] = 0.0;
    run_auction(a, EPS * (highest > lowest ? highest - lowest : 1.0));
    for (int64_t i = 0; i < items; i++) out[i] = a->expert[i];
}

static PyObject *solve(PyObject *self, PyObject *args) {
    Py_buffer scores, out;
    Py_ssize_t problems, items, experts;
    if (!PyArg_ParseTuple(args, "y*w*nnn", &scores, &out, &problems, &items, &experts)) return NULL;
    PyObject *result = NULL;
    Auction a = {0};
    if (problems < 0 || items < 1 || experts < 1 ||
        scores.len != (Py_ssize_t)(problems * items * experts * sizeof(float)) ||
        out.len != (Py_ssize_t)(problems * items * sizeof(int64_t))) {
        PyErr_Format(PyExc_ValueError,
                     "solve: buffers of %zd and %zd bytes do not hold (%zd, %zd, %zd) float32 "
                     "scores and (%zd, %zd) int64 experts",
                     scores.len, out.len, problems, items, experts, problems, items);
        goto done;
    }
    a.experts = experts;
    a.capacity = (items + experts - 1) / experts;
    a.slots = experts * a.capacity;
    a.value = malloc(a.slots * experts * sizeof(double));
    a.price = malloc(a.slots * sizeof(double));
    a.cheapest = malloc(experts * sizeof(double));
    a.holder = malloc(a.slots * sizeof(int64_t));
    a.expert = malloc(a.slots * sizeof(int64_t));
    a.queue = malloc(a.slots * sizeof(int64_t));
    if (!a.value || !a.price || !a.cheapest || !a.holder || !a.expert || !a.queue) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < problems; r++)
        assign(&a, (const float *)scores.buf + r * items * experts, items,
               (int64_t *)out.buf + r * items);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    free(a.value);
    free(a.price);
    free(a.cheapest);
    free(a.holder);
    free(a.expert);
    free(a.queue);
    PyBuffer_Release(&scores);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"solve", solve, METH_VARARGS,
     "solve(scores, out, problems, items, experts): writes into out, (problems, items) int64, "
     "the expert of each item of each (items, experts) float32 problem of scores."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_auction",
                                    "Balanced assignment on the CPU by an auction.", -1, methods};

PyMODINIT_FUNC PyInit__auction(void) { return PyModule_Create(&module); }
