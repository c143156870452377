<?php
/**
 * Plugin Name:       KiviHook Bridge
 * Description:       Hands every KiviCare action to KiviHook through a durable outbox: nothing is sent from the clinic's request, and nothing is lost while KiviHook is unreachable.
 * Version:           1.0.0
 * Requires at least: 6.1
 * Requires PHP:      8.1
 * License:           MIT
 * Text Domain:       kivihook-bridge
 */

if (!defined('ABSPATH')) {
    exit;
}

define('KIVIHOOK_BRIDGE_VERSION', '1.0.0');
define('KIVIHOOK_BRIDGE_FILE', __FILE__);

require_once __DIR__ . '/includes/class-kivihook-bridge-outbox.php';
require_once __DIR__ . '/includes/class-kivihook-bridge-events.php';
require_once __DIR__ . '/includes/class-kivihook-bridge-sender.php';
require_once __DIR__ . '/includes/class-kivihook-bridge-admin.php';

/** The WP-Cron hook that sends what the outbox holds. */
const KIVIHOOK_BRIDGE_CRON = 'kivihook_bridge_send';

register_activation_hook(__FILE__, static function (): void {
    KiviHook_Bridge_Outbox::install();
    KiviHook_Bridge_Sender::site_id();
    KiviHook_Bridge_Sender::schedule(time());
});

register_deactivation_hook(__FILE__, static function (): void {
    // Deactivation stops the sender; the outbox keeps its rows for a later activation.
    wp_clear_scheduled_hook(KIVIHOOK_BRIDGE_CRON);
});

add_action('plugins_loaded', static function (): void {
    KiviHook_Bridge_Outbox::maybe_upgrade();
}, 5);

KiviHook_Bridge_Events::register();
add_action(KIVIHOOK_BRIDGE_CRON, [KiviHook_Bridge_Sender::class, 'on_cron']);
add_action('shutdown', [KiviHook_Bridge_Sender::class, 'on_shutdown'], 1000);

if (is_admin()) {
    KiviHook_Bridge_Admin::register();
}

if (defined('WP_CLI') && WP_CLI) {
    require_once __DIR__ . '/includes/class-kivihook-bridge-cli.php';
    WP_CLI::add_command('kivihook-bridge', KiviHook_Bridge_CLI::class);
}

/**
 * Queue a custom event (`custom.<name>`) for KiviHook, as the KiviCare actions are queued:
 * into the outbox, sent later by the sender.
 *
 * @param array<string,mixed> $data
 * @return bool Whether it was written.
 */
function kivihook_bridge_enqueue(string $type, $clinic_id, array $data, string $record_id = ''): bool
{
    return KiviHook_Bridge_Events::enqueue_event($type, $type, $record_id, $clinic_id, $data);
}
