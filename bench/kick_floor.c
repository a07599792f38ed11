/*
 * kick_floor: the floor of a userspace vCPU kick on this machine, in C.
 *
 * One VM, one vCPU created on and run by its own thread; the guest is the real-mode
 * "spinner" of vcpureq.kvm.guests (its bytes are assembled by vcpureq and passed in a
 * file): it increments a counter in guest memory forever and never exits on its own.
 *
 * The main thread measures N kicks. For each: wait until the guest counter moves (the vCPU
 * is in guest mode), then set kvm_run.immediate_exit = 1 and pthread_kill() the vCPU
 * thread (the IMMEDIATE_EXIT variant: sender sets the flag, then signals), and spin on
 * atomics until the vCPU thread reports that KVM_RUN returned -EINTR ("exit") and that it
 * is about to call KVM_RUN again ("reentry"). The signal handler does nothing.
 *
 * Output: median and p99 (and min/mean/max) in microseconds of kick->exit and
 * kick->reentry; with --json, one JSON object on stdout.
 *
 * With two or more CPUs the main thread is pinned to CPU 0 and the vCPU thread to CPU 1.
 *
 * Build: gcc -O2 -pthread -o kick_floor kick_floor.c
 * Run:   ./kick_floor SPINNER.bin [iterations] [--json] [--baseline]
 * --baseline also times the same signal to a thread spinning in userspace (no KVM).
 * (vcpureq/kvm/floor.py does both.)
 *
 * Layout (as vcpureq.kvm.vm): RAM slot 0 at 0..0xa0000, the guest's home region at
 * 0x10000 with CS = DS = ES = SS = 0x1000, IP = 0, SP = 0x2000; its counter at DS:0x1000.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sched.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define RAM_SIZE 0xa0000UL
#define REGION 0x10000UL
#define PROGRESS (REGION + 0x1000UL)
#define STACK_TOP 0x2000UL
#define TSS_ADDR 0xfffbd000UL
#define WAIT_NS 2000000000LL /* every wait gives up after 2 s */

static int kvm_fd = -1, vm_fd = -1;
static uint8_t *ram;
static long mmap_size;
static int kick_sig;

static struct kvm_run *volatile run_page; /* published by the vCPU thread */
static atomic_int ready;                  /* 1: set up, 2: failed */
static atomic_int stop_flag;
static atomic_ulong entries;   /* incremented just before each KVM_RUN */
static atomic_ulong exits;     /* incremented when KVM_RUN returned -EINTR */
static atomic_llong exit_ns;   /* CLOCK_MONOTONIC of the last -EINTR return */
static atomic_int vcpu_error;  /* errno or exit reason + 1000 of a failure */

static void die(const char *what)
{
	fprintf(stderr, "kick_floor: %s: %s\n", what, strerror(errno));
	exit(2);
}

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void noop_handler(int sig)
{
	(void)sig;
}

/* --baseline: the same signal sent to a thread spinning in userspace (no KVM): the cost of
 * the IPI and signal delivery alone. The handler timestamps its own run. */
static atomic_int baseline_stop;

static void stamp_handler(int sig)
{
	(void)sig;
	atomic_store(&exit_ns, now_ns());
	atomic_fetch_add(&exits, 1);
}

static void pin(int cpu);

static void *spin_thread(void *arg)
{
	(void)arg;
	pin(1);
	atomic_store(&ready, 1);
	while (!atomic_load(&baseline_stop))
		__builtin_ia32_pause();
	return NULL;
}

static int baseline(int iterations, long long *samples)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = stamp_handler;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(kick_sig, &sa, NULL) < 0)
		die("sigaction");
	pthread_t tid;
	atomic_store(&ready, 0);
	if (pthread_create(&tid, NULL, spin_thread, NULL))
		die("pthread_create");
	while (!atomic_load(&ready))
		;
	for (int i = 0; i < iterations; i++) {
		unsigned long x0 = atomic_load(&exits);
		long long t0 = now_ns();
		if (pthread_kill(tid, kick_sig))
			die("pthread_kill");
		while (atomic_load(&exits) == x0)
			if (now_ns() - t0 > WAIT_NS) {
				fprintf(stderr, "kick_floor: baseline signal %d lost\n", i);
				return -1;
			}
		samples[i] = atomic_load(&exit_ns) - t0;
	}
	atomic_store(&baseline_stop, 1);
	pthread_join(tid, NULL);
	return 0;
}

static int ncpus;

/* Keep the spinning main thread and the vCPU thread on different CPUs (when there are two):
 * otherwise the spinner can starve the very thread it waits for until the next tick. */
static void pin(int cpu)
{
	if (ncpus < 2)
		return;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu % ncpus, &set);
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static void *vcpu_thread(void *arg)
{
	(void)arg;
	pin(1);
	int fd = ioctl(vm_fd, KVM_CREATE_VCPU, 0);
	if (fd < 0) {
		atomic_store(&vcpu_error, errno);
		atomic_store(&ready, 2);
		return NULL;
	}
	struct kvm_run *run = mmap(NULL, mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	struct kvm_sregs sregs;
	if (run == MAP_FAILED || ioctl(fd, KVM_GET_SREGS, &sregs) < 0) {
		atomic_store(&vcpu_error, errno);
		atomic_store(&ready, 2);
		close(fd);
		return NULL;
	}
	struct kvm_segment *segs[] = {&sregs.cs, &sregs.ds, &sregs.es,
				      &sregs.fs, &sregs.gs, &sregs.ss};
	for (unsigned i = 0; i < sizeof(segs) / sizeof(segs[0]); i++) {
		segs[i]->base = REGION;
		segs[i]->selector = REGION >> 4;
		segs[i]->limit = 0xffff;
	}
	struct kvm_regs regs = {.rip = 0, .rsp = STACK_TOP, .rflags = 2};
	if (ioctl(fd, KVM_SET_SREGS, &sregs) < 0 || ioctl(fd, KVM_SET_REGS, &regs) < 0) {
		atomic_store(&vcpu_error, errno);
		atomic_store(&ready, 2);
		munmap(run, mmap_size);
		close(fd);
		return NULL;
	}
	run_page = run;
	atomic_store(&ready, 1);

	for (;;) {
		/* Clear before reading requests (the stop flag): a later kick sets it again. */
		__atomic_store_n(&run->immediate_exit, 0, __ATOMIC_SEQ_CST);
		if (atomic_load(&stop_flag))
			break;
		atomic_fetch_add(&entries, 1);
		int r = ioctl(fd, KVM_RUN, 0);
		if (r < 0 && errno == EINTR) {
			atomic_store(&exit_ns, now_ns());
			atomic_fetch_add(&exits, 1);
			continue;
		}
		atomic_store(&vcpu_error, r < 0 ? errno : 1000 + (int)run->exit_reason);
		break;
	}
	run_page = NULL;
	munmap(run, mmap_size);
	close(fd);
	return NULL;
}

static int cmp_ll(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;
	return (x > y) - (x < y);
}

struct summary {
	double min, median, p99, mean, max;
};

static struct summary summarize(long long *v, int n)
{
	struct summary s;
	double sum = 0;
	qsort(v, n, sizeof(v[0]), cmp_ll);
	for (int i = 0; i < n; i++)
		sum += v[i];
	int p99 = (int)((n - 1) * 0.99 + 0.5);
	s.min = v[0] / 1e3;
	s.median = (n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0) / 1e3;
	s.p99 = v[p99] / 1e3;
	s.mean = sum / n / 1e3;
	s.max = v[n - 1] / 1e3;
	return s;
}

static uint32_t progress(void)
{
	return __atomic_load_n((uint32_t *)(ram + PROGRESS), __ATOMIC_RELAXED);
}

static void vcpu_failed(void)
{
	int e = atomic_load(&vcpu_error);
	if (e >= 1000)
		fprintf(stderr, "kick_floor: unexpected KVM exit reason %d\n", e - 1000);
	else
		fprintf(stderr, "kick_floor: vCPU thread: %s\n", strerror(e));
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s SPINNER.bin [iterations] [--json] [--baseline]\n",
			argv[0]);
		return 2;
	}
	int iterations = 2000, json = 0, with_baseline = 0;
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			json = 1;
		else if (!strcmp(argv[i], "--baseline"))
			with_baseline = 1;
		else
			iterations = atoi(argv[i]);
	}
	if (iterations < 1 || iterations > 10000000) {
		fprintf(stderr, "kick_floor: iterations must be in [1, 10000000]\n");
		return 2;
	}

	kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm_fd < 0)
		die("open /dev/kvm");
	if (ioctl(kvm_fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
		fprintf(stderr, "kick_floor: KVM API version is not %d\n", KVM_API_VERSION);
		return 2;
	}
	if (ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_IMMEDIATE_EXIT) <= 0) {
		fprintf(stderr, "kick_floor: KVM_CAP_IMMEDIATE_EXIT is missing\n");
		return 2;
	}
	mmap_size = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (mmap_size <= 0)
		die("KVM_GET_VCPU_MMAP_SIZE");
	vm_fd = ioctl(kvm_fd, KVM_CREATE_VM, 0);
	if (vm_fd < 0)
		die("KVM_CREATE_VM");
	if (ioctl(vm_fd, KVM_SET_TSS_ADDR, TSS_ADDR) < 0)
		die("KVM_SET_TSS_ADDR");
	ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ram == MAP_FAILED)
		die("mmap guest memory");

	FILE *f = fopen(argv[1], "rb");
	if (!f)
		die(argv[1]);
	size_t n = fread(ram + REGION, 1, 0x1000, f);
	fclose(f);
	if (n == 0) {
		fprintf(stderr, "kick_floor: %s is empty\n", argv[1]);
		return 2;
	}
	struct kvm_userspace_memory_region slot = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = RAM_SIZE,
		.userspace_addr = (uint64_t)(uintptr_t)ram};
	if (ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &slot) < 0)
		die("KVM_SET_USER_MEMORY_REGION");

	kick_sig = SIGRTMIN + 2;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = noop_handler;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(kick_sig, &sa, NULL) < 0)
		die("sigaction");

	ncpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
	pin(0);
	pthread_t tid;
	if (pthread_create(&tid, NULL, vcpu_thread, NULL))
		die("pthread_create");
	long long deadline = now_ns() + WAIT_NS;
	while (atomic_load(&ready) == 0)
		if (now_ns() > deadline) {
			fprintf(stderr, "kick_floor: vCPU thread did not start\n");
			return 2;
		}
	if (atomic_load(&ready) == 2)
		vcpu_failed();
	struct kvm_run *run = run_page;

	long long *to_exit = calloc(iterations, sizeof(long long));
	long long *to_reentry = calloc(iterations, sizeof(long long));
	if (!to_exit || !to_reentry)
		die("calloc");
	for (int i = 0; i < iterations; i++) {
		/* In guest mode: the guest counter moves. */
		uint32_t p0 = progress();
		deadline = now_ns() + WAIT_NS;
		while (progress() == p0) {
			if (atomic_load(&vcpu_error))
				vcpu_failed();
			if (now_ns() > deadline) {
				fprintf(stderr, "kick_floor: the guest does not run\n");
				return 2;
			}
		}
		unsigned long x0 = atomic_load(&exits), e0 = atomic_load(&entries);
		long long t0 = now_ns();
		__atomic_store_n(&run->immediate_exit, 1, __ATOMIC_SEQ_CST);
		if (pthread_kill(tid, kick_sig))
			die("pthread_kill");
		while (atomic_load(&exits) == x0) {
			if (atomic_load(&vcpu_error))
				vcpu_failed();
			if (now_ns() - t0 > WAIT_NS) {
				fprintf(stderr, "kick_floor: kick %d lost\n", i);
				return 2;
			}
		}
		while (atomic_load(&entries) == e0)
			if (now_ns() - t0 > WAIT_NS) {
				fprintf(stderr, "kick_floor: no re-entry after kick %d\n", i);
				return 2;
			}
		long long t2 = now_ns();
		to_exit[i] = atomic_load(&exit_ns) - t0;
		to_reentry[i] = t2 - t0;
	}

	atomic_store(&stop_flag, 1);
	__atomic_store_n(&run->immediate_exit, 1, __ATOMIC_SEQ_CST);
	pthread_kill(tid, kick_sig);
	pthread_join(tid, NULL);

	struct summary ex = summarize(to_exit, iterations);
	struct summary re = summarize(to_reentry, iterations);
	struct summary bl = {0};
	if (with_baseline) {
		if (baseline(iterations, to_exit) < 0)
			return 2;
		bl = summarize(to_exit, iterations);
	}
	if (json) {
		if (with_baseline)
			printf("{\"baseline_us\": {\"min\": %.3f, \"median\": %.3f, \"p99\": %.3f, "
			       "\"mean\": %.3f, \"max\": %.3f}, ",
			       bl.min, bl.median, bl.p99, bl.mean, bl.max);
		else
			printf("{");
		printf("\"iterations\": %d, \"signal\": %d, "
		       "\"exit_us\": {\"min\": %.3f, \"median\": %.3f, \"p99\": %.3f, "
		       "\"mean\": %.3f, \"max\": %.3f}, "
		       "\"reentry_us\": {\"min\": %.3f, \"median\": %.3f, \"p99\": %.3f, "
		       "\"mean\": %.3f, \"max\": %.3f}}\n",
		       iterations, kick_sig, ex.min, ex.median, ex.p99, ex.mean, ex.max,
		       re.min, re.median, re.p99, re.mean, re.max);
	} else {
		printf("kick -> KVM_RUN returned -EINTR: median %.2f us, p99 %.2f us "
		       "(min %.2f, mean %.2f, max %.2f; %d kicks)\n",
		       ex.median, ex.p99, ex.min, ex.mean, ex.max, iterations);
		printf("kick -> about to re-enter KVM_RUN: median %.2f us, p99 %.2f us "
		       "(min %.2f, mean %.2f, max %.2f)\n",
		       re.median, re.p99, re.min, re.mean, re.max);
		if (with_baseline)
			printf("baseline, signal to a thread spinning in userspace: median %.2f us, "
			       "p99 %.2f us (min %.2f, mean %.2f, max %.2f)\n",
			       bl.median, bl.p99, bl.min, bl.mean, bl.max);
	}
	free(to_exit);
	free(to_reentry);
	munmap(ram, RAM_SIZE);
	close(vm_fd);
	close(kvm_fd);
	return 0;
}
