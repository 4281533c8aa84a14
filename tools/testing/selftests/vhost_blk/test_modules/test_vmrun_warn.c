// SPDX-License-Identifier: GPL-2.0
/*
 * Proves that vm-run fails a run whose kernel log shows a warning: loading
 * this module prints one, and vm-run's own selftest expects the run to fail.
 */

#include <linux/bug.h>
#include <linux/module.h>

static int __init test_vmrun_warn_init(void)
{
	WARN(1, "test_vmrun_warn: deliberate warning\n");
	return 0;
}
module_init(test_vmrun_warn_init);

static void __exit test_vmrun_warn_exit(void)
{
}
module_exit(test_vmrun_warn_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Deliberate warning for the VM runner's selftest");
