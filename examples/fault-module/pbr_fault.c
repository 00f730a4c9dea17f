// SPDX-License-Identifier: GPL-2.0
/*
 * pbr_fault: makes the guest fail on purpose, so that `pbr-img run`'s
 * failure detection and recovery can be tested on a real kernel.
 *
 *   insmod pbr_fault.ko fault=KIND
 *
 * KIND is one of:
 *   oops        a NULL pointer dereference in the loading task; with
 *               panic_on_oops=1 the kernel panics (pvpanic GUEST_PANICKED);
 *   softlockup  the loading task spins with preemption disabled,
 *               interrupts on; the soft-lockup detector reports it after
 *               2 * watchdog_thresh seconds (panics with softlockup_panic=1);
 *   hungtask    the loading task sleeps uninterruptibly forever; the
 *               hung-task detector reports it after hung_task_timeout_secs
 *               (panics with hung_task_panic=1);
 *   hang        every online CPU spins forever with interrupts off, and
 *               keeps the NMI hard-lockup detector quiet: a hang nothing in
 *               the guest reports, seen only from the host (the agent's
 *               heartbeat stops).
 *
 * Loading never succeeds: either the guest fails, or an unknown KIND is
 * refused (-EINVAL) with one line in the kernel log.
 */
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/nmi.h>
#include <linux/preempt.h>
#include <linux/sched.h>
#include <linux/stop_machine.h>
#include <linux/string.h>

static char *fault = "";
module_param(fault, charp, 0444);
MODULE_PARM_DESC(fault, "what to do: oops, softlockup, hungtask or hang");

static void fault_oops(void)
{
	int *volatile nowhere = NULL;

	pr_emerg("pbr_fault: oops: dereferencing NULL\n");
	WRITE_ONCE(*nowhere, 1);
}

static void fault_softlockup(void)
{
	pr_emerg("pbr_fault: softlockup: spinning with preemption disabled\n");
	preempt_disable();
	for (;;)
		cpu_relax();
}

static void fault_hungtask(void)
{
	pr_emerg("pbr_fault: hungtask: sleeping uninterruptibly forever\n");
	for (;;) {
		set_current_state(TASK_UNINTERRUPTIBLE);
		schedule();
	}
}

/* Runs on every online CPU, interrupts off (stop_machine). */
static int spin_forever(void *unused)
{
	for (;;) {
		/*
		 * Only the hard-lockup detector could still see this CPU (it
		 * runs in NMI); telling it the CPU is fine keeps it quiet, so
		 * that the hang is never reported, whatever nmi_watchdog says.
		 */
		touch_nmi_watchdog();
		cpu_relax();
	}
	return 0;
}

static void fault_hang(void)
{
	pr_emerg("pbr_fault: hang: every CPU spins with interrupts off\n");
	stop_machine(spin_forever, NULL, cpu_online_mask);
}

static int __init pbr_fault_init(void)
{
	if (!strcmp(fault, "oops"))
		fault_oops();
	else if (!strcmp(fault, "softlockup"))
		fault_softlockup();
	else if (!strcmp(fault, "hungtask"))
		fault_hungtask();
	else if (!strcmp(fault, "hang"))
		fault_hang();
	pr_err("pbr_fault: fault=%s is not one of oops, softlockup, hungtask, hang\n", fault);
	return -EINVAL;
}

module_init(pbr_fault_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("pbr: inject a guest failure (oops, soft lockup, hung task, hang)");
