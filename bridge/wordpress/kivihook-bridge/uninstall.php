<?php
/**
 * Uninstall: remove the outbox table, every option and the scheduled sender.
 */

if (!defined('WP_UNINSTALL_PLUGIN')) {
    exit;
}

global $wpdb;
wp_clear_scheduled_hook('kivihook_bridge_send');
$wpdb->query('DROP TABLE IF EXISTS ' . $wpdb->prefix . 'kivihook_outbox');
foreach ([
    'kivihook_bridge_url', 'kivihook_bridge_key', 'kivihook_bridge_actions', 'kivihook_bridge_site_id',
    'kivihook_bridge_db_version', 'kivihook_bridge_retention_days', 'kivihook_bridge_backoff_until',
    'kivihook_bridge_failures', 'kivihook_bridge_last_error', 'kivihook_bridge_last_success',
    'kivihook_bridge_last_test', 'kivihook_bridge_last_refusal', 'kivihook_bridge_sending',
] as $option) {
    delete_option($option);
}
