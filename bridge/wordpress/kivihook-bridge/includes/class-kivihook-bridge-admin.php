<?php
/**
 * Settings → KiviHook: the URL, the ingest key, the actions to forward, Test connection,
 * and the outbox (pending, parked, last error, send now).
 */

if (!defined('ABSPATH')) {
    exit;
}

final class KiviHook_Bridge_Admin
{
    public const PAGE = 'kivihook-bridge';
    private const CAP = 'manage_options';

    public static function register(): void
    {
        add_action('admin_menu', static function (): void {
            add_options_page(
                __('KiviHook', 'kivihook-bridge'),
                __('KiviHook', 'kivihook-bridge'),
                self::CAP,
                self::PAGE,
                [self::class, 'render']
            );
        });
        foreach (['save', 'test', 'send', 'retry'] as $what) {
            add_action('admin_post_kivihook_bridge_' . $what, [self::class, 'handle_' . $what]);
        }
    }

    private static function check(string $what): void
    {
        if (!current_user_can(self::CAP)) {
            wp_die(esc_html__('You are not allowed to change KiviHook settings.', 'kivihook-bridge'), 403);
        }
        check_admin_referer('kivihook_bridge_' . $what);
    }

    private static function back(string $notice): void
    {
        set_transient('kivihook_bridge_notice_' . get_current_user_id(), $notice, 60);
        wp_safe_redirect(admin_url('options-general.php?page=' . self::PAGE));
        exit;
    }

    public static function handle_save(): void
    {
        self::check('save');
        $url = esc_url_raw(trim((string) wp_unslash($_POST['kivihook_bridge_url'] ?? '')), ['http', 'https']);
        update_option('kivihook_bridge_url', $url);
        $key = trim((string) wp_unslash($_POST['kivihook_bridge_key'] ?? ''));
        if ($key !== '') {
            KiviHook_Bridge_Sender::set_key(sanitize_text_field($key));
        }
        if (!empty($_POST['kivihook_bridge_key_clear'])) {
            KiviHook_Bridge_Sender::set_key('');
        }
        $known = array_keys(KiviHook_Bridge_Events::types());
        $chosen = array_values(array_intersect($known, array_map('sanitize_text_field', (array) wp_unslash($_POST['kivihook_bridge_actions'] ?? []))));
        if (count($chosen) === count($known)) {
            delete_option('kivihook_bridge_actions'); // all, including types added later
        } else {
            update_option('kivihook_bridge_actions', $chosen);
        }
        self::back(__('Settings saved.', 'kivihook-bridge'));
    }

    public static function handle_test(): void
    {
        self::check('test');
        $r = KiviHook_Bridge_Sender::test_connection();
        self::back($r['message']);
    }

    public static function handle_send(): void
    {
        self::check('send');
        $r = KiviHook_Bridge_Sender::run(true);
        self::back($r['error'] ?? sprintf(
            /* translators: 1: events sent, 2: events parked */
            __('Sent %1$d events; %2$d refused and parked.', 'kivihook-bridge'),
            $r['sent'],
            $r['parked']
        ));
    }

    public static function handle_retry(): void
    {
        self::check('retry');
        $n = KiviHook_Bridge_Outbox::retry_parked();
        KiviHook_Bridge_Sender::schedule(time());
        /* translators: %d: number of events */
        self::back(sprintf(__('%d parked events are queued again.', 'kivihook-bridge'), $n));
    }

    private static function when(int $at): string
    {
        return wp_date(get_option('date_format') . ' ' . get_option('time_format'), $at);
    }

    private static function button(string $what, string $label, string $class = 'button'): void
    {
        echo '<form method="post" action="' . esc_url(admin_url('admin-post.php')) . '" style="display:inline-block;margin-right:8px">';
        echo '<input type="hidden" name="action" value="' . esc_attr('kivihook_bridge_' . $what) . '">';
        wp_nonce_field('kivihook_bridge_' . $what);
        echo '<button type="submit" class="' . esc_attr($class) . '">' . esc_html($label) . '</button></form>';
    }

    public static function render(): void
    {
        if (!current_user_can(self::CAP)) {
            wp_die(esc_html__('You are not allowed to see KiviHook settings.', 'kivihook-bridge'), 403);
        }
        $notice = get_transient('kivihook_bridge_notice_' . get_current_user_id());
        if ($notice !== false) {
            delete_transient('kivihook_bridge_notice_' . get_current_user_id());
        }
        $has_key = (string) get_option('kivihook_bridge_key', '') !== '';
        $only = get_option('kivihook_bridge_actions', null);
        $counts = KiviHook_Bridge_Outbox::counts();
        $error = get_option('kivihook_bridge_last_error');
        $test = get_option('kivihook_bridge_last_test');
        $success = (int) get_option('kivihook_bridge_last_success', 0);
        $backoff = (int) get_option('kivihook_bridge_backoff_until', 0);

        echo '<div class="wrap" id="kivihook-bridge">';
        echo '<h1>' . esc_html__('KiviHook', 'kivihook-bridge') . '</h1>';
        if ($notice !== false) {
            echo '<div class="notice notice-info" id="kivihook-bridge-notice"><p>' . esc_html((string) $notice) . '</p></div>';
        }

        echo '<h2>' . esc_html__('Connection', 'kivihook-bridge') . '</h2>';
        echo '<form method="post" action="' . esc_url(admin_url('admin-post.php')) . '">';
        echo '<input type="hidden" name="action" value="kivihook_bridge_save">';
        wp_nonce_field('kivihook_bridge_save');
        echo '<table class="form-table" role="presentation"><tbody>';
        echo '<tr><th scope="row"><label for="kivihook_bridge_url">' . esc_html__('KiviHook URL', 'kivihook-bridge') . '</label></th><td>';
        echo '<input type="url" class="regular-text" id="kivihook_bridge_url" name="kivihook_bridge_url" value="' . esc_attr((string) get_option('kivihook_bridge_url', '')) . '" placeholder="https://kivihook.example.com">';
        echo '<p class="description">' . esc_html__('The address of KiviHook\'s ingest (events are posted to /v1/events/batch).', 'kivihook-bridge') . '</p></td></tr>';
        echo '<tr><th scope="row"><label for="kivihook_bridge_key">' . esc_html__('Ingest key', 'kivihook-bridge') . '</label></th><td>';
        // The key is never written back into the page, not even in part.
        echo '<input type="password" class="regular-text" id="kivihook_bridge_key" name="kivihook_bridge_key" value="" autocomplete="new-password">';
        echo '<p class="description">' . esc_html($has_key
            ? __('A key is stored (encrypted). Leave this empty to keep it.', 'kivihook-bridge')
            : __('No key is stored yet.', 'kivihook-bridge')) . '</p>';
        if ($has_key) {
            echo '<label><input type="checkbox" name="kivihook_bridge_key_clear" value="1"> ' . esc_html__('Remove the stored key', 'kivihook-bridge') . '</label>';
        }
        echo '</td></tr>';
        echo '<tr><th scope="row">' . esc_html__('Events to forward', 'kivihook-bridge') . '</th><td><fieldset>';
        foreach (KiviHook_Bridge_Events::types() as $type => $actions) {
            $checked = !is_array($only) || in_array($type, $only, true);
            echo '<label style="display:block"><input type="checkbox" name="kivihook_bridge_actions[]" value="' . esc_attr($type) . '"' . checked($checked, true, false) . '> <code>' . esc_html($type) . '</code>';
            if ($actions) {
                echo ' <span class="description">' . esc_html(implode(', ', $actions)) . '</span>';
            }
            echo '</label>';
        }
        echo '</fieldset></td></tr></tbody></table>';
        echo '<p class="submit"><button type="submit" class="button button-primary">' . esc_html__('Save settings', 'kivihook-bridge') . '</button></p>';
        echo '</form>';

        self::button('test', __('Test connection', 'kivihook-bridge'), 'button button-secondary');
        if (is_array($test)) {
            echo '<p id="kivihook-bridge-test" class="' . esc_attr($test['ok'] ? 'kivihook-ok' : 'kivihook-error') . '">'
                . esc_html(sprintf(
                    /* translators: 1: date, 2: result */
                    __('Last test (%1$s): %2$s', 'kivihook-bridge'),
                    self::when((int) $test['at']),
                    (string) $test['message']
                )) . '</p>';
        }

        echo '<h2>' . esc_html__('Outbox', 'kivihook-bridge') . '</h2>';
        echo '<table class="widefat striped" style="max-width:40em"><tbody>';
        echo '<tr><th scope="row">' . esc_html__('Pending', 'kivihook-bridge') . '</th><td id="kivihook-bridge-pending">' . esc_html((string) $counts['pending']) . '</td></tr>';
        echo '<tr><th scope="row">' . esc_html__('Failed (refused by KiviHook, parked)', 'kivihook-bridge') . '</th><td id="kivihook-bridge-parked">' . esc_html((string) $counts['parked']) . '</td></tr>';
        echo '<tr><th scope="row">' . esc_html__('Sent (kept for the retention period)', 'kivihook-bridge') . '</th><td id="kivihook-bridge-sent">' . esc_html((string) $counts['sent']) . '</td></tr>';
        echo '<tr><th scope="row">' . esc_html__('Last delivery to KiviHook', 'kivihook-bridge') . '</th><td>' . esc_html($success ? self::when($success) : __('never', 'kivihook-bridge')) . '</td></tr>';
        if (is_array($error)) {
            echo '<tr><th scope="row">' . esc_html__('Last error', 'kivihook-bridge') . '</th><td id="kivihook-bridge-last-error">'
                . esc_html(self::when((int) $error['at']) . ': ' . (string) $error['message']) . '</td></tr>';
        }
        if ($backoff > time()) {
            echo '<tr><th scope="row">' . esc_html__('Next automatic attempt', 'kivihook-bridge') . '</th><td>' . esc_html(self::when($backoff)) . '</td></tr>';
        }
        echo '</tbody></table><p>';
        self::button('send', __('Send now', 'kivihook-bridge'), 'button button-primary');
        if ($counts['parked'] > 0) {
            self::button('retry', __('Queue parked events again', 'kivihook-bridge'));
        }
        echo '</p>';

        $parked = KiviHook_Bridge_Outbox::parked();
        if ($parked) {
            echo '<h3>' . esc_html__('Refused events', 'kivihook-bridge') . '</h3>';
            echo '<table class="widefat striped" id="kivihook-bridge-refused"><thead><tr><th>' . esc_html__('Row', 'kivihook-bridge') . '</th><th>'
                . esc_html__('Action', 'kivihook-bridge') . '</th><th>' . esc_html__('Type', 'kivihook-bridge') . '</th><th>'
                . esc_html__('KiviHook said', 'kivihook-bridge') . '</th></tr></thead><tbody>';
            foreach ($parked as $row) {
                echo '<tr><td>' . esc_html((string) $row->id) . '</td><td><code>' . esc_html((string) $row->action) . '</code></td><td><code>'
                    . esc_html((string) $row->event_type) . '</code></td><td>' . esc_html((string) $row->last_error) . '</td></tr>';
            }
            echo '</tbody></table>';
        }
        echo '</div>';
    }
}
