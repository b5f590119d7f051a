/*
 * How fast libsodium's crypto_box_afternm (the cipher CURVE uses for every
 * message) runs on one core of this machine: the floor under what CURVE can
 * add per byte (one encryption on the sending side, one decryption on the
 * receiving side). docs/security.md uses it to bound the large-transfer
 * ratio of the bench's +curve cases.
 *
 *   gcc -O2 integration/testdata/cipher_speed.c -o /tmp/cipher_speed -lsodium
 *   /tmp/cipher_speed
 */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(void) {
	if (sodium_init() < 0) {
		return 1;
	}
	const size_t n = 256 * 1024 + crypto_box_ZEROBYTES; /* libzmq pads its plaintext so */
	const int iterations = 4096;
	unsigned char *plain = calloc(n, 1), *sealed = malloc(n), key[crypto_box_BEFORENMBYTES];
	unsigned char nonce[crypto_box_NONCEBYTES] = {0};
	randombytes_buf(key, sizeof key);
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (int i = 0; i < iterations; i++) {
		crypto_box_afternm(sealed, plain, n, nonce, key);
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
	double bytes = (double)iterations * n;
	printf("crypto_box_afternm: %.0f MB/s, %.2f CPU s/GiB\n", bytes / s / 1e6, s / (bytes / 1073741824.0));
	return 0;
}
