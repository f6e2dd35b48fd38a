/* getrandom(2) and getentropy(3) that give the same bytes every time, preloaded into the
 * instruction-count benchmarks by tools/instruction-budgets (LD_PRELOAD) so that std's
 * HashMap seeds, and with them the probes of every hash table (serde_json's objects among
 * them), are the same in every run. Never for a server: it makes every "random" seed known. */
#include <stddef.h>
#include <sys/types.h>

static void fill(void *buffer, size_t length) {
    unsigned char *bytes = buffer;
    for (size_t i = 0; i < length; i++) {
        bytes[i] = (unsigned char)(i * 131u + 7u);
    }
}

ssize_t getrandom(void *buffer, size_t length, unsigned int flags) {
    (void)flags;
    fill(buffer, length);
    return (ssize_t)length;
}

int getentropy(void *buffer, size_t length) {
    fill(buffer, length);
    return 0;
}
