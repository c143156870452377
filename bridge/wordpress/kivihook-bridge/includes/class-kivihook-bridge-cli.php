<?php
/**
 * `wp kivihook-bridge`: send the outbox, show its state, test the connection.
 */

if (!defined('ABSPATH')) {
    exit;
}

final class KiviHook_Bridge_CLI
{
    /**
     * Send what the outbox holds now, ignoring the backoff.
     */
    public function send(): void
    {
        $r = KiviHook_Bridge_Sender::run(true);
        if ($r['error'] !== null) {
            WP_CLI::error(sprintf('sent %d, parked %d: %s', $r['sent'], $r['parked'], $r['error']));
        }
        WP_CLI::success(sprintf('sent %d, parked %d', $r['sent'], $r['parked']));
    }

    /**
     * Show pending, parked and sent rows and the last error.
     *
     * [--format=<format>]
     * : table or json
     */
    public function status(array $args, array $assoc): void
    {
        $c = KiviHook_Bridge_Outbox::counts();
        $error = get_option('kivihook_bridge_last_error');
        $c['last_error'] = is_array($error) ? $error['message'] : '';
        if (($assoc['format'] ?? 'table') === 'json') {
            WP_CLI::line((string) wp_json_encode($c));
            return;
        }
        foreach ($c as $k => $v) {
            WP_CLI::line(sprintf('%-15s %s', $k, (string) $v));
        }
    }

    /**
     * Post a custom.kivihook.test event to KiviHook and show the answer.
     */
    public function test(): void
    {
        $r = KiviHook_Bridge_Sender::test_connection();
        $r['ok'] ? WP_CLI::success($r['message']) : WP_CLI::error($r['message']);
    }

    /**
     * Queue the parked (refused) events again.
     */
    public function retry(): void
    {
        WP_CLI::success(sprintf('%d queued again', KiviHook_Bridge_Outbox::retry_parked()));
    }
}
