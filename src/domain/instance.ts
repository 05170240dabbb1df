/**
 * An attested holder's instance facts as the store keeps them: one canonical JSON text, the
 * very bytes the views write for `instance` (http/views.ts), so the SQLite listing can splice
 * it into the JSON it writes in SQL without reading it (store/sqlite/listing-json.ts).
 */
import type { InstanceInfo } from './types.js';

/** The view's object: snake_case, in this key order. */
export function instanceView(i: InstanceInfo): {
  account_id: string; region: string; availability_zone: string; instance_type: string; image_id: string;
} {
  return { account_id: i.accountId, region: i.region, availability_zone: i.availabilityZone, instance_type: i.instanceType, image_id: i.imageId };
}

/** The stored text: JSON.stringify of the view's object. */
export function instanceJson(i: InstanceInfo): string {
  return JSON.stringify(instanceView(i));
}

const KEYS = ['account_id', 'region', 'availability_zone', 'instance_type', 'image_id'] as const;

/** The facts of a stored (or imported) text; throws when it is not the object `instanceJson` writes. */
export function parseInstanceJson(text: string): InstanceInfo {
  const v: unknown = JSON.parse(text);
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('instance: expected a JSON object');
  const o: Record<string, unknown> = { ...v };
  const s = (k: (typeof KEYS)[number]): string => {
    const x = o[k];
    if (typeof x !== 'string') throw new Error(`instance: ${k} must be a string`);
    return x;
  };
  const extra = Object.keys(o).find((k) => !KEYS.some((x) => x === k));
  if (extra !== undefined) throw new Error(`instance: unknown field ${extra}`);
  return { accountId: s('account_id'), region: s('region'), availabilityZone: s('availability_zone'), instanceType: s('instance_type'), imageId: s('image_id') };
}
