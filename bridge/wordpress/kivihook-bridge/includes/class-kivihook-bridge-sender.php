<?php
/**
 * The sender: posts the outbox to KiviHook's `POST /v1/events/batch`, outside the clinic's
 * request (WP-Cron, WP-CLI, the settings page, or after the response was flushed).
 */

if (!defined('ABSPATH')) {
    exit;
}

final class KiviHook_Bridge_Sender
{
    public const BATCH = 100;
    /** Seconds one run may spend sending before it leaves the rest to the next run. */
    private const RUN_BUDGET = 20;
    private const LOCK = 'kivihook_bridge_sending';
    private const KEY_PREFIX = 'khenc:v1:';

    /** A stable id for this site, part of every event id, so ids are unique across sites. */
    public static function site_id(): string
    {
        $id = get_option('kivihook_bridge_site_id');
        if (!is_string($id) || $id === '') {
            $id = 'wp' . substr(str_replace('-', '', wp_generate_uuid4()), 0, 16);
            add_option('kivihook_bridge_site_id', $id);
            $id = (string) get_option('kivihook_bridge_site_id', $id);
        }
        return $id;
    }

    /** The event id of an outbox row: stable, so a resend is a duplicate to KiviHook. */
    public static function event_id(object $row): string
    {
        $action = preg_replace('/[^A-Za-z0-9_.-]/', '', (string) $row->action);
        $record = preg_replace('/[^A-Za-z0-9_.-]/', '', (string) $row->record_id);
        return substr('kc_' . self::site_id() . '_' . $action . '_' . ($record === '' ? '0' : $record), 0, 180) . '_' . (int) $row->id;
    }

    public static function base_url(): string
    {
        $url = trim((string) get_option('kivihook_bridge_url', ''));
        $url = preg_replace('#/v1/events(/batch)?/?$#', '', $url);
        return rtrim((string) $url, '/');
    }

    /** The ingest key in the clear. A key stored in the clear (update_option) is sealed now. */
    public static function key(): string
    {
        $stored = (string) get_option('kivihook_bridge_key', '');
        if ($stored === '') {
            return '';
        }
        if (str_starts_with($stored, self::KEY_PREFIX)) {
            return self::open($stored);
        }
        update_option('kivihook_bridge_key', self::seal($stored), false);
        return $stored;
    }

    public static function set_key(string $plain): void
    {
        update_option('kivihook_bridge_key', $plain === '' ? '' : self::seal($plain), false);
    }

    private static function secret(): string
    {
        return hash('sha256', 'kivihook-bridge|' . wp_salt('auth') . '|' . wp_salt('secure_auth'), true);
    }

    private static function seal(string $plain): string
    {
        $nonce = random_bytes(SODIUM_CRYPTO_SECRETBOX_NONCEBYTES);
        return self::KEY_PREFIX . base64_encode($nonce . sodium_crypto_secretbox($plain, $nonce, self::secret()));
    }

    private static function open(string $sealed): string
    {
        $raw = base64_decode(substr($sealed, strlen(self::KEY_PREFIX)), true);
        if ($raw === false || strlen($raw) <= SODIUM_CRYPTO_SECRETBOX_NONCEBYTES) {
            return '';
        }
        $plain = sodium_crypto_secretbox_open(
            substr($raw, SODIUM_CRYPTO_SECRETBOX_NONCEBYTES),
            substr($raw, 0, SODIUM_CRYPTO_SECRETBOX_NONCEBYTES),
            self::secret()
        );
        return $plain === false ? '' : $plain;
    }

    /** Schedule a send at $when unless one is already due by then. */
    public static function schedule(int $when): void
    {
        $next = wp_next_scheduled(KIVIHOOK_BRIDGE_CRON);
        if ($next !== false && $next <= $when) {
            return;
        }
        if ($next !== false) {
            wp_clear_scheduled_hook(KIVIHOOK_BRIDGE_CRON);
        }
        wp_schedule_single_event($when, KIVIHOOK_BRIDGE_CRON);
    }

    /**
     * The `kivihook_bridge_send` hook. Fired by WP-Cron it respects the backoff; fired by
     * anything else (WP-CLI, `do_action`, "Send now") it sends at once.
     */
    public static function on_cron(): void
    {
        self::run(!wp_doing_cron());
    }

    /** After the response has gone to the browser, send what this request wrote. */
    public static function on_shutdown(): void
    {
        if (!KiviHook_Bridge_Events::wrote()) {
            return;
        }
        if (function_exists('fastcgi_finish_request')) {
            // The clinic's response is complete: nothing below makes the visitor wait.
            fastcgi_finish_request();
        }
        KiviHook_Bridge_Outbox::flush();
        $backoff = (int) get_option('kivihook_bridge_backoff_until', 0);
        if ($backoff > time() || !function_exists('fastcgi_finish_request')) {
            self::schedule(max(time(), $backoff));
            return;
        }
        // Only once the clinic's response is complete: the visitor never waits for KiviHook.
        self::run(false);
    }

    /**
     * Send pending rows, batch after batch, until none is left, KiviHook is unreachable or
     * the run's time is up.
     *
     * @return array{sent:int,parked:int,error:?string}
     */
    public static function run(bool $force): array
    {
        $result = ['sent' => 0, 'parked' => 0, 'error' => null];
        if (!$force && (int) get_option('kivihook_bridge_backoff_until', 0) > time()) {
            return $result;
        }
        // One sender at a time; a lock older than the run budget is from a sender that died.
        $lock = get_option(self::LOCK);
        if ($lock && (int) $lock > time() - 2 * self::RUN_BUDGET) {
            return $result;
        }
        update_option(self::LOCK, (string) time(), false);
        try {
            $result = self::send_all();
        } finally {
            delete_option(self::LOCK);
        }
        KiviHook_Bridge_Outbox::purge((int) get_option('kivihook_bridge_retention_days', 7));
        $left = KiviHook_Bridge_Outbox::counts()['pending'];
        if ($left > 0) {
            self::schedule(max(time(), (int) get_option('kivihook_bridge_backoff_until', 0)));
        }
        return $result;
    }

    private static function send_all(): array
    {
        $result = ['sent' => 0, 'parked' => 0, 'error' => null];
        $url = self::base_url();
        $key = self::key();
        if ($url === '' || $key === '') {
            $result['error'] = __('Not configured: set the KiviHook URL and ingest key.', 'kivihook-bridge');
            self::failed($result['error'], 0, false);
            return $result;
        }
        $started = time();
        $size = self::BATCH;
        while (time() - $started < self::RUN_BUDGET) {
            $rows = KiviHook_Bridge_Outbox::pending($size);
            if (!$rows) {
                break;
            }
            $events = [];
            foreach ($rows as $row) {
                $event = json_decode((string) $row->payload, true);
                if (!is_array($event)) {
                    KiviHook_Bridge_Outbox::park((int) $row->id, 'the stored event is not valid JSON');
                    $result['parked']++;
                    continue 2;
                }
                $events[] = ['id' => self::event_id($row)] + $event;
            }
            $answer = self::post('/v1/events/batch', ['events' => $events], $url, $key);
            $ids = array_map(static fn($r) => (int) $r->id, $rows);
            if ($answer['code'] === 202 || $answer['code'] === 200) {
                $done = [];
                foreach ($answer['body']['results'] ?? [] as $i => $r) {
                    if (isset($rows[$i]) && in_array($r['status'] ?? '', ['accepted', 'duplicate'], true)) {
                        $done[] = (int) $rows[$i]->id;
                    }
                }
                KiviHook_Bridge_Outbox::mark_sent($done);
                $result['sent'] += count($done);
                self::succeeded();
                if (count($done) < count($rows)) {
                    break; // some were in progress elsewhere: the next run sends them
                }
                $size = self::BATCH;
                continue;
            }
            $message = self::describe($answer);
            if (self::refused($answer['code'])) {
                // KiviHook refused an event: the field names it (`events[3].type`). Park that
                // one and send the others; without an index, narrow down one at a time.
                $field = (string) ($answer['body']['error']['field'] ?? '');
                if (preg_match('/^events\[(\d+)\]/', $field, $m) && isset($rows[(int) $m[1]])) {
                    KiviHook_Bridge_Outbox::park((int) $rows[(int) $m[1]]->id, $message);
                    $result['parked']++;
                    update_option('kivihook_bridge_last_refusal', ['at' => time(), 'message' => $message], false);
                    continue;
                }
                if (count($rows) > 1) {
                    $size = 1;
                    continue;
                }
                KiviHook_Bridge_Outbox::park((int) $rows[0]->id, $message);
                $result['parked']++;
                update_option('kivihook_bridge_last_refusal', ['at' => time(), 'message' => $message], false);
                continue;
            }
            // Unreachable, 5xx, 429, 401/403: nothing is parked, everything waits.
            KiviHook_Bridge_Outbox::note_failure($ids, $message);
            $result['error'] = $message;
            self::failed($message, $answer['retry_after'], true);
            break;
        }
        return $result;
    }

    /** A 4xx that is about the events sent, not about the connection or the key. */
    private static function refused(int $code): bool
    {
        return $code >= 400 && $code < 500 && !in_array($code, [401, 403, 404, 405, 408, 429], true);
    }

    /**
     * POST JSON to KiviHook.
     *
     * @return array{code:int,body:?array,raw:string,error:?string,retry_after:int}
     */
    public static function post(string $path, array $body, ?string $url = null, ?string $key = null): array
    {
        $url ??= self::base_url();
        $key ??= self::key();
        $response = wp_remote_post($url . $path, [
            'timeout' => 15,
            'redirection' => 0,
            'headers' => [
                'Authorization' => 'Bearer ' . $key,
                'Content-Type' => 'application/json',
                'User-Agent' => 'KiviHook-Bridge/' . KIVIHOOK_BRIDGE_VERSION . '; ' . home_url(),
            ],
            'body' => wp_json_encode($body, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE),
        ]);
        if (is_wp_error($response)) {
            return ['code' => 0, 'body' => null, 'raw' => '', 'error' => $response->get_error_message(), 'retry_after' => 0];
        }
        $raw = (string) wp_remote_retrieve_body($response);
        $decoded = json_decode($raw, true);
        return [
            'code' => (int) wp_remote_retrieve_response_code($response),
            'body' => is_array($decoded) ? $decoded : null,
            'raw' => $raw,
            'error' => null,
            'retry_after' => (int) wp_remote_retrieve_header($response, 'retry-after'),
        ];
    }

    /** One line for the settings page: the status and KiviHook's own message. */
    public static function describe(array $answer): string
    {
        if ($answer['code'] === 0) {
            /* translators: %s: the HTTP client's error */
            return sprintf(__('KiviHook unreachable: %s', 'kivihook-bridge'), (string) $answer['error']);
        }
        $error = $answer['body']['error'] ?? null;
        if (is_array($error)) {
            $text = trim(($error['field'] ?? '') !== '' ? $error['field'] . ': ' . ($error['message'] ?? '') : (string) ($error['message'] ?? ''));
            return sprintf('HTTP %d %s: %s', $answer['code'], (string) ($error['code'] ?? ''), $text);
        }
        return sprintf('HTTP %d: %s', $answer['code'], substr(wp_strip_all_tags($answer['raw']), 0, 300));
    }

    private static function failed(string $message, int $retry_after, bool $backoff): void
    {
        $failures = (int) get_option('kivihook_bridge_failures', 0) + 1;
        update_option('kivihook_bridge_failures', $failures, false);
        update_option('kivihook_bridge_last_error', ['at' => time(), 'message' => $message], false);
        if ($backoff) {
            // 30 s, 1 min, 2 min, … up to an hour; a Retry-After is never cut short.
            $wait = max($retry_after, min(3600, 30 * (2 ** min(7, $failures - 1))));
            update_option('kivihook_bridge_backoff_until', time() + $wait, false);
        }
    }

    private static function succeeded(): void
    {
        if (get_option('kivihook_bridge_failures')) {
            update_option('kivihook_bridge_failures', 0, false);
            update_option('kivihook_bridge_backoff_until', 0, false);
        }
        if (get_option('kivihook_bridge_last_error')) {
            delete_option('kivihook_bridge_last_error');
        }
        update_option('kivihook_bridge_last_success', time(), false);
    }

    /**
     * Test connection: post a `custom.kivihook.test` event now.
     *
     * @return array{ok:bool,message:string}
     */
    public static function test_connection(): array
    {
        if (self::base_url() === '' || self::key() === '') {
            return ['ok' => false, 'message' => __('Set the KiviHook URL and ingest key first.', 'kivihook-bridge')];
        }
        $event = [
            'id' => 'kc_' . self::site_id() . '_test_' . str_replace('-', '', wp_generate_uuid4()),
            'type' => 'custom.kivihook.test',
            'data' => ['site_url' => home_url(), 'site_timezone' => wp_timezone_string(), 'bridge_version' => KIVIHOOK_BRIDGE_VERSION],
        ];
        $answer = self::post('/v1/events/batch', ['events' => [$event]]);
        $ok = in_array($answer['code'], [200, 202], true);
        $message = $ok
            /* translators: %d: HTTP status */
            ? sprintf(__('Connected: KiviHook answered %d and accepted the test event.', 'kivihook-bridge'), $answer['code'])
            : self::describe($answer);
        update_option('kivihook_bridge_last_test', ['at' => time(), 'ok' => $ok, 'message' => $message], false);
        if ($ok) {
            self::succeeded();
        } else {
            update_option('kivihook_bridge_last_error', ['at' => time(), 'message' => $message], false);
        }
        return ['ok' => $ok, 'message' => $message];
    }
}
